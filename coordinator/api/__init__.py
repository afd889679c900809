"""The coordinator's public gRPC API: the service, who may call what, request validation, views."""

"""The Sagawire web console: every saga drawn as its definition's graph, live.

``sagawire console`` serves it (console/serve.py) on 127.0.0.1:50080 by default. It is
a client of the coordinator's public gRPC API only, like the CLI (console/coordinator.py),
with the user's token or, on a loopback address only, an operator credential of its own
(console/access.py). Its pages — the sagas with counts by status, one saga as a graph
with its attempts, compensations, data, transitions and trace, the breakers and the
definitions — are static files (console/static) drawing the JSON and server-sent events
of console/app.py; console/views.py and console/graph.py shape what they draw.
"""

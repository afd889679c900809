"""A container health check that costs little: is the process on this port SERVING?

::

    python -m common.health_probe 127.0.0.1:50052 [TIMEOUT_SECONDS]

The question ``sagawire health`` asks, through the standard gRPC health service, with the
same certificate (mutual TLS as ``SAGAWIRE_TLS_IDENTITY``: in compose the container's own,
from ``SAGAWIRE_CERTS_DIR``, or the ``SAGAWIRE_TLS_*_FILE`` paths; plaintext only with
``SAGAWIRE_TLS=off``), but importing nothing beyond grpc and the health service's stubs:
the whole CLI costs ten times the CPU, and a stack checks five processes every few
seconds. It prints one line, the answer, and exits 0 only for SERVING.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The spellings of "off" that the processes' settings accept for SAGAWIRE_TLS.
_OFF = frozenset({"off", "false", "0", "no", "n", "f"})


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def credentials(env: dict[str, str]) -> grpc.ChannelCredentials | None:
    """The client credentials the processes' settings describe (None: plaintext)."""
    if env.get("SAGAWIRE_TLS", "on").strip().lower() in _OFF:
        return None
    data = env.get("SAGAWIRE_DATA_DIR") or ".sagawire"
    certs = env.get("SAGAWIRE_CERTS_DIR") or os.path.join(data, "certs")
    identity = env.get("SAGAWIRE_TLS_IDENTITY") or "operator"
    ca = env.get("SAGAWIRE_TLS_CA_FILE") or os.path.join(certs, "ca.crt")
    cert = env.get("SAGAWIRE_TLS_CERT_FILE") or os.path.join(certs, f"{identity}.crt")
    key = env.get("SAGAWIRE_TLS_KEY_FILE") or os.path.join(certs, f"{identity}.key")
    return grpc.ssl_channel_credentials(_read(ca), _read(key), _read(cert))


def check(address: str, timeout: float, env: dict[str, str]) -> str:
    """The server's health status name (``SERVING``...), or the failed call's code."""
    given = credentials(env)
    channel = grpc.secure_channel(address, given) if given else grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as error:
            return str(error.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python -m common.health_probe HOST:PORT [TIMEOUT_SECONDS]", file=sys.stderr)
        return 2
    try:
        status = check(argv[1], float(argv[2]) if len(argv) == 3 else 3.0, dict(os.environ))
    except (OSError, ValueError) as error:
        print(f"{argv[1]}: {error}", file=sys.stderr)
        return 2
    print(f"{argv[1]}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

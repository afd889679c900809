"""How every verb reaches the stack, as whom, and what its exit status says.

**Where.** The coordinator is at ``--address HOST:PORT`` (a global option:
``sagawire --address …  VERB``), else ``SAGAWIRE_COORDINATOR_ADDR``, else
``127.0.0.1:50050``. A service's own API (events, poison events, faults) is at
``SAGAWIRE_<NAME>_ADDR`` when that is set; otherwise the coordinator is asked where it
calls the service (``ListBreakers`` names each participant's address), and a host name
this machine cannot resolve (compose's ``payment:50053``) is replaced by the coordinator's
host (compose publishes every port on 127.0.0.1). With no coordinator address given and
none answering, the defaults (127.0.0.1:50051 …) are used.

**As whom.** Mutual TLS with ``SAGAWIRE_TLS_IDENTITY``'s certificate (operator), found
under ``--data`` / ``SAGAWIRE_DATA_DIR`` unless ``SAGAWIRE_CERTS_DIR`` says otherwise; the
coordinator's bearer token as cli/tokens.py says.

**Exit status** (the README's command table)::

    0  done; for a saga: completed
    1  the stack refused or failed the request (any other error, printed as one line)
    2  a bad argument or setting
    3  the saga was compensated
    4  the saga needs attention (or is stalled)
    5  not found
    6  the stack could not be reached, or did not answer in time
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import IntEnum
from typing import NoReturn

import grpc

from cli.tokens import cli_token
from common.config import DEFAULT_PORTS, BadSetting, Endpoints, env_name, load
from common.grpc_errors import parse_rpc_error
from common.tls import Identity, TlsError, load_material
from common.tokens import with_token
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import coordinator_pb2_grpc

COORDINATOR = "coordinator"
DEFAULT_IDENTITY = "operator"


class ExitCode(IntEnum):
    """What a verb's exit status says (see the module docstring)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    COMPENSATED = 3
    NEEDS_ATTENTION = 4
    NOT_FOUND = 5
    UNREACHABLE = 6


_OUTCOMES = {
    pb.SAGA_STATUS_COMPENSATED: ExitCode.COMPENSATED,
    pb.SAGA_STATUS_NEEDS_ATTENTION: ExitCode.NEEDS_ATTENTION,
    pb.SAGA_STATUS_STALLED: ExitCode.NEEDS_ATTENTION,
}


def outcome_code(status: pb.SagaStatus.ValueType) -> ExitCode:
    """A saga's status as an exit status: 0 completed (or still running), 3, 4."""
    return _OUTCOMES.get(status, ExitCode.OK)


def fail(message: str, code: ExitCode = ExitCode.FAILED) -> NoReturn:
    """``error: message`` as one line on stderr, then exit with ``code``."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    raise SystemExit(int(code))


def identity() -> Identity:
    """The identity the CLI presents, its TLS material checked (a BadSetting naming the
    variable to fix when it is missing)."""
    me = Identity.from_env()
    if me.settings.tls:
        try:
            load_material(me.settings, me.name)
        except TlsError as error:
            setting = error.setting
            if me.name != DEFAULT_IDENTITY and not setting.startswith("SAGAWIRE_TLS_"):
                setting = "SAGAWIRE_TLS_IDENTITY"
            raise BadSetting(setting, str(error)) from None
    return me


def coordinator_address() -> str:
    """The coordinator's address: ``--address``, ``SAGAWIRE_COORDINATOR_ADDR`` or the default."""
    return load(Endpoints).coordinator_addr


def _explicit(name: str) -> bool:
    return env_name(f"{name}_addr") in os.environ


def describe_rpc_error(error: grpc.RpcError, what: str, target: str) -> tuple[str, ExitCode]:
    """One line for a failed call and the exit status it means."""
    remote = parse_rpc_error(error)
    code = remote.code
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach {what} at {target} (is it running?)", ExitCode.UNREACHABLE
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{what} at {target} did not answer in time", ExitCode.UNREACHABLE
    if code == grpc.StatusCode.UNAUTHENTICATED:
        hint = "give a token with --token or SAGAWIRE_TOKEN (`sagawire token issue` where the"
        return f"UNAUTHENTICATED: {remote.message}; {hint} stack's key is)", ExitCode.FAILED
    field = f" ({remote.field})" if remote.field else ""
    same = remote.reason.replace("_", "") == code.name.replace("_", "")
    reason = f" [{remote.reason}]" if remote.reason and not same else ""
    line = f"{code.name}{reason}{field}: {remote.message}"
    return line, ExitCode.NOT_FOUND if code == grpc.StatusCode.NOT_FOUND else ExitCode.FAILED


@contextmanager
def rpc_errors(what: str, target: str) -> Iterator[None]:
    """A failed call inside becomes one line and its exit status (see the docstring)."""
    try:
        yield
    except grpc.RpcError as error:  # grpc.aio.AioRpcError is one too
        fail(*describe_rpc_error(error, what, target))


@contextmanager
def coordinator_api(token: str | None = None) -> Iterator[coordinator_pb2_grpc.CoordinatorStub]:
    """A blocking stub of the coordinator's API carrying the CLI's token; a failed call
    ends the command with one line and its exit status."""
    target = coordinator_address()
    bearer = cli_token(token)
    with identity().sync_channel(target) as channel, rpc_errors("the coordinator", target):
        yield with_token(coordinator_pb2_grpc.CoordinatorStub(channel), bearer)


def service_addresses(names: Sequence[str], token: str | None = None) -> dict[str, str]:
    """Where each named service's own API is (see the module docstring)."""
    endpoints = load(Endpoints)
    found = {name: endpoints.of(name) for name in names if _explicit(name)}
    wanted = [name for name in names if name not in found]
    if not wanted:
        return found
    target = endpoints.coordinator_addr
    try:
        learned = _ask_coordinator(target, token)
    except grpc.RpcError as error:
        if _explicit(COORDINATOR):
            line, code = describe_rpc_error(error, "the coordinator", target)
            variables = ", ".join(env_name(f"{n}_addr") for n in wanted)
            fail(f"{line}; it tells the CLI where the services are (or set {variables})", code)
        learned = {}
    host = target.rpartition(":")[0]
    for name in wanted:
        address = learned.get(name) or f"127.0.0.1:{DEFAULT_PORTS[name]}"
        found[name] = reachable_from_here(address, host)
    return found


def _ask_coordinator(target: str, token: str | None) -> dict[str, str]:
    with identity().sync_channel(target) as channel:
        stub = with_token(coordinator_pb2_grpc.CoordinatorStub(channel), cli_token(token))
        reply = stub.ListBreakers(pb.ListBreakersRequest(), timeout=5)
    return {b.participant: b.address for b in reply.breakers if b.address}


def reachable_from_here(address: str, fallback_host: str) -> str:
    """``address``, or its port at ``fallback_host`` when its host does not resolve here."""
    host, _, port = address.rpartition(":")
    try:
        socket.getaddrinfo(host.strip("[]"), None)
    except OSError:
        return f"{fallback_host}:{port}"
    return address

"""Run the console: bind its address, connect to the coordinator, serve until stopped.

The socket is bound before anything else, so a taken port is one line and exit
status 1 (as ``sagawire up`` refuses one) instead of a server sharing it. The
console then logs ``console serving address=HOST:PORT url=...`` and serves with
uvicorn until SIGTERM or Ctrl-C, which close its streams within a second or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn

from common.tls import Identity
from console.access import HeldCredential, is_loopback
from console.app import Console, create_app
from console.coordinator import GrpcCoordinator
from console.traces import TraceSource

log = logging.getLogger("console")

DEFAULT_PORT = 50080
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class ConsoleSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    coordinator: str = "127.0.0.1:50050"
    # The trace files' directory; Jaeger's query URL and the link a browser opens.
    data_dir: Path = Path(".sagawire")
    jaeger_url: str = ""
    jaeger_link: str = ""
    # The operator token given to hold (loopback only); None: mint one if the key is here.
    token: str | None = None
    poll_seconds: float = 1.0


class PortTaken(Exception):
    """The console's address could not be bound; the message says which and why."""


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise PortTaken(f"cannot listen on {host}:{port}: {error}") from None
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise PortTaken(
            f"cannot listen on {host}:{port}: {error.strerror} (is a console already running?"
            " --port picks another)"
        ) from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run(settings: ConsoleSettings) -> None:
    """Serve the console until stopped. Raises :class:`PortTaken`."""
    sock = bind(settings.host, settings.port)
    held: HeldCredential | None = None
    if is_loopback(settings.host):
        held = HeldCredential(settings.token)
        credential = "operator token held" if held.present else "none held: users sign in"
    else:
        credential = "none held (not a loopback address): users sign in with their token"
        if settings.token:
            log.warning(
                "console on %s: the given token is not used; only a console on a loopback"
                " address holds a credential, users sign in with their own",
                settings.host,
            )
    traces = TraceSource(settings.data_dir, settings.jaeger_url, settings.jaeger_link)
    identity = Identity.from_env()
    app = create_app(
        lambda: GrpcCoordinator(settings.coordinator, identity),
        traces,
        held,
        settings.poll_seconds,
    )
    host, port = sock.getsockname()[:2]
    log.info(
        "console serving address=%s:%d url=%s coordinator=%s credential=%s traces=%s",
        host,
        port,
        url_of(sock),
        settings.coordinator,
        credential,
        traces.describe(),
    )
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        loop="asyncio",
        timeout_graceful_shutdown=2,
        proxy_headers=False,
        server_header=False,
    )
    _Server(config, app.state.console).run(sockets=[sock])


class _Server(uvicorn.Server):
    """uvicorn's server, stopped by SIGTERM or Ctrl-C like every Sagawire process: open
    streams end at once (uvicorn would wait for browsers to close them), and a clean stop
    exits 0 (uvicorn raises the signal again once it stopped, so the exit status would
    say "killed")."""

    def __init__(self, config: uvicorn.Config, console: Console) -> None:
        super().__init__(config)
        self._console = console

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        with contextlib.suppress(RuntimeError):  # no loop running yet, or any more
            asyncio.get_running_loop().call_soon_threadsafe(self._console.stopping.set)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

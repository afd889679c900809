"""NATS JetStream for the tests that need it: a stream of each test's own, deleted after.

The server is the machine's (127.0.0.1:4222, JetStream on), or ``SAGAWIRE_TEST_NATS``.
Unreachable, the tests skip with how to start it; in CI (``CI=true``) they fail instead,
since CI has the server. Each test gets a prefix of its own (``SAGAWIRE_EVENTS_PREFIX``:
the stream's name and its subjects' first token), so tests never see each other's events.

:class:`PrivateNats` is a nats-server of the test's own, on a free port with a store in
the test's directory, for a test that stops and restarts the server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest

from tests.support import free_port, wait_until

NATS_URL = os.environ.get("SAGAWIRE_TEST_NATS", "nats://127.0.0.1:4222")
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
START_HINT = (
    "start it with: start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server"
    " -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
)
TRANSPORTS = ("grpc", "nats")


async def _quiet(error: Exception) -> None:
    """A probe's connection errors are its answer, not news (nats logs them otherwise)."""


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


async def require_nats(url: str = NATS_URL) -> None:
    """Skip (fail in CI) unless the server answers, with JetStream on."""
    try:
        client = await nats.connect(url, connect_timeout=2, allow_reconnect=False, error_cb=_quiet)
    except (nats.errors.Error, OSError, TimeoutError) as error:
        _unavailable(f"NATS unreachable at {url} ({error or type(error).__name__}); {START_HINT}")
        return
    try:
        await client.jetstream().account_info()
    except nats.js.errors.Error as error:
        _unavailable(f"NATS at {url} has no JetStream ({error}); {START_HINT} (-js)")
    finally:
        await client.close()


@dataclass(frozen=True)
class Events:
    """How a test's processes send events: over gRPC streams, or on NATS with a prefix."""

    transport: str
    url: str = ""
    prefix: str = ""

    @property
    def on_nats(self) -> bool:
        return self.transport == "nats"

    def settings(self) -> dict[str, Any]:
        """Settings overrides for in-process servers (none for gRPC, the default)."""
        if not self.on_nats:
            return {}
        return {"events": self.url, "events_prefix": self.prefix}

    def env(self) -> dict[str, str]:
        """The same, as environment variables for subprocesses."""
        return {f"SAGAWIRE_{k.upper()}": str(v) for k, v in self.settings().items()}

    async def message_counts(self, subject_filter: str) -> dict[str, int]:
        """Messages the stream holds, by subject, among those matching ``subject_filter``
        (a pattern after the prefix, e.g. ``order.>``)."""
        client = await nats.connect(self.url, allow_reconnect=False, error_cb=_quiet)
        try:
            info = await client.jetstream().stream_info(
                self.prefix, subjects_filter=f"{self.prefix}.{subject_filter}"
            )
            return dict(info.state.subjects or {})
        finally:
            await client.close()


@asynccontextmanager
async def events_over(transport: str, url: str = NATS_URL) -> AsyncIterator[Events]:
    """``transport``'s settings for one test; on NATS a fresh prefix, whose stream (and
    consumers) are deleted at the end."""
    if transport != "nats":
        yield Events(transport)
        return
    await require_nats(url)
    events = Events("nats", url, f"swt_{uuid.uuid4().hex[:12]}")
    try:
        yield events
    finally:
        with contextlib.suppress(Exception):
            client = await nats.connect(
                url, connect_timeout=2, allow_reconnect=False, error_cb=_quiet
            )
            try:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await client.jetstream().delete_stream(events.prefix)
            finally:
                await client.close()


@dataclass(frozen=True)
class ServerTls:
    """A TLS server's certificate and key, and the CA its clients' certificates must
    come from (mutual TLS)."""

    cert: Path
    key: Path
    ca: Path


def permissions_config(prefix: str, passwords: Mapping[str, str]) -> str:
    """A nats-server configuration with one user per process of a stack, each allowed to
    publish events on its own subjects only (``<prefix>.<name>.>``), to use the stream's
    JetStream API and consumers, and to hear replies; ``coordinator`` publishes no event.
    The README's "Events on NATS JetStream" shows it for the prefix ``sagawire``."""
    shared = [
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{prefix}",
        f"$JS.API.STREAM.CREATE.{prefix}",
        f"$JS.API.STREAM.UPDATE.{prefix}",
        f"$JS.API.CONSUMER.LIST.{prefix}",
        f"$JS.API.CONSUMER.INFO.{prefix}.>",
        f"$JS.API.CONSUMER.CREATE.{prefix}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{prefix}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{prefix}.>",
        f"$JS.ACK.{prefix}.>",
    ]
    users = []
    for name, password in passwords.items():
        own = [] if name == "coordinator" else [f"{prefix}.{name}.>"]
        allowed = ", ".join(f'"{subject}"' for subject in [*own, *shared])
        users.append(
            f'      {{user: "{name}", password: "{password}", permissions: {{\n'
            f"        publish: {{allow: [{allowed}]}},\n"
            f'        subscribe: {{allow: ["_INBOX.>"]}}}}}}'
        )
    return (
        "accounts {\n  SAGAWIRE {\n    jetstream: enabled\n    users: [\n"
        + ",\n".join(users)
        + "\n    ]\n  }\n}\n"
    )


class PrivateNats:
    """A nats-server with JetStream of this test's own: it may stop and restart it.

    With ``tls``, it speaks only mutual TLS (``tls://`` URL). With ``config`` (e.g.
    :func:`permissions_config`), it runs with that configuration; ``probe`` is the user
    and password it is checked with."""

    def __init__(
        self,
        directory: Path,
        tls: ServerTls | None = None,
        config: str = "",
        probe: tuple[str, str] | None = None,
    ) -> None:
        if not Path(NATS_SERVER).exists():
            _unavailable(f"no nats-server at {NATS_SERVER}: apt-get install nats-server")
        self.port = free_port()
        self.store = directory / "nats-store"
        self.log_file = directory / "nats-server.log"
        self.config_file = directory / "nats-server.conf"
        if config:
            self.config_file.write_text(config)
        self.tls = tls
        self.url = f"{'tls' if tls else 'nats'}://127.0.0.1:{self.port}"
        self._probe = self.url_as(*probe) if probe else self.url
        self._proc: subprocess.Popen[bytes] | None = None

    def url_as(self, user: str, password: str) -> str:
        return f"{'tls' if self.tls else 'nats'}://{user}:{password}@127.0.0.1:{self.port}"

    def client_tls(self) -> ssl.SSLContext | None:
        """What the probe presents: the server's own certificate will do (same CA)."""
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(self.tls.cert, self.tls.key)
        return context

    def _spawn(self) -> subprocess.Popen[bytes]:
        args = ["-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)]
        if self.config_file.exists():
            args += ["-c", str(self.config_file)]
        if self.tls is not None:
            args += ["--tlsverify", "--tlscert", str(self.tls.cert), "--tlskey", str(self.tls.key)]
            args += ["--tlscacert", str(self.tls.ca)]
        return subprocess.Popen(
            [NATS_SERVER, *args, "-l", str(self.log_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def start(self) -> None:
        """Start it (again, on the same port and store) and wait until it answers."""
        self._proc = self._spawn()

        async def answers() -> bool:
            try:
                client = await nats.connect(
                    self._probe,
                    connect_timeout=1,
                    allow_reconnect=False,
                    error_cb=_quiet,
                    tls=self.client_tls(),
                )
            except (nats.errors.Error, OSError, TimeoutError):
                return False
            try:
                await client.jetstream().account_info()
                return True
            except nats.js.errors.Error:
                return False
            finally:
                await client.close()

        await wait_until(answers, timeout=20, interval=0.1, message="the private nats-server")

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL), by its own pid."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

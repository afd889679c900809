"""One supervised child process of the local stack: spawn, relay output, wait, stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Mapping
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.tls import Identity

_HEALTH_POLL = 0.1


class StackError(Exception):
    """The stack could not start, or a child died while it ran."""


class StackLog(Protocol):
    """Where the supervisor sends children's output and its own notes."""

    def line(self, name: str, text: str) -> None:
        """One line a child wrote on stdout or stderr."""

    def note(self, text: str, *, error: bool = False) -> None:
        """Something the supervisor did or saw."""


def describe_exit(code: int) -> str:
    """'exited with status 3' or 'killed by SIGKILL'."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class Child:
    """One supervised process: spawn, wait for SERVING, relay output, stop."""

    def __init__(
        self,
        name: str,
        module: str,
        port: int,
        env: Mapping[str, str],
        log: StackLog,
        identity: Identity,
    ) -> None:
        self.name = name
        # Who the supervisor is when it asks the child's health service.
        self._identity = identity
        self.module = module
        self.port = port
        self._env = dict(env)
        self._log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        # Whether the current process has reported SERVING (it handles SIGTERM from then on).
        self.serving = False
        self._relay: asyncio.Task[None] | None = None
        # Held while a process is being created or stopped, so the two never interleave.
        self.lock = asyncio.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._env,
            process_group=0,
            limit=1 << 20,
        )
        self.started_at = asyncio.get_running_loop().time()
        self.serving = False
        assert self.proc.stdout is not None
        self._relay = asyncio.create_task(self._relay_lines(self.proc.stdout))
        self._log.note(f"{self.name} started pid={self.proc.pid} address={self.address}")

    async def _relay_lines(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the limit: relay what fits, keep going
                raw = await stream.read(1 << 20)
            if not raw:
                return
            self._log.line(self.name, raw.decode(errors="replace").rstrip())

    async def wait_serving(self, within: float, stop: asyncio.Event) -> None:
        """Poll the health service until SERVING; raise StackError if it dies or times out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        request = health_pb2.HealthCheckRequest(service="")
        # The process's certificate names what it runs (a replica "inventory-2" too).
        peer = self.module.rpartition(".")[2]
        async with self._identity.aio_channel(self.address, peer=peer) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc is None or self.proc.returncode is not None:
                    code = self.proc.returncode if self.proc else None
                    how = describe_exit(code) if code is not None else "did not start"
                    raise StackError(f"{self.name} {how} before it was SERVING")
                if stop.is_set():
                    raise StackError("stopped during startup")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(request, timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        self.serving = True
                        return
                if loop.time() > deadline:
                    raise StackError(f"{self.name} was not SERVING within {within:g}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _HEALTH_POLL)

    async def wait(self) -> int:
        """Wait for the current process to end and its output to be relayed."""
        assert self.proc is not None
        code = await self.proc.wait()
        if self._relay is not None:
            await self._relay
        return code

    async def stop(self, grace: float) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL.

        Returns the exit status, or None if there was nothing to stop (never started,
        or already exited: that exit was reported when it happened).
        """
        async with self.lock:
            if self.proc is None or self.proc.returncode is not None:
                return None
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                self._log.note(f"{self.name} still running after {grace:g}s: SIGKILL", error=True)
                self.kill()
            return await self.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

"""The real ``sagawire up`` command: health, clean stop, a dying child, restart."""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.stack import busy_ports, default_names, ports_from_base
from tests.support import Process, open_channel, wait_until

SAGAWIRE = Path(sys.executable).parent / "sagawire"
SERVICE_FILES = ("order.db", "inventory.db", "payment.db", "shipping.db")


def free_base_port() -> int:
    """A base port whose five ports (base .. base+4) are all free right now."""
    for _ in range(100):
        base = random.randrange(20_000, 60_000)
        if not busy_ports(ports_from_base(base)):
            return base
    raise AssertionError("no five consecutive free ports")


class Up:
    """``sagawire up`` as a real subprocess on free ports with its own data directory."""

    def __init__(self, data: Path, *extra: str) -> None:
        self.base = free_base_port()
        self.ports = {n: p for n, p in ports_from_base(self.base).items() if n in default_names()}
        args = [str(SAGAWIRE), "up", "--data", str(data), "--base-port", str(self.base), *extra]
        self.process = Process(args)
        self.seen: list[psutil.Process] = []

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.process.proc

    def children(self) -> dict[str, psutil.Process]:
        """The supervised processes, by name (the module after ``-m``)."""
        found = {}
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.proc.pid).children():
                with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                    module = child.cmdline()[-1]
                    found[module.removeprefix("services.")] = child
        self.seen.extend(found.values())
        return found

    async def all_serving(self) -> bool:
        for port in self.ports.values():
            async with open_channel(f"127.0.0.1:{port}") as channel:
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1.0
                    )
                except grpc.aio.AioRpcError:
                    return False
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    return False
        return True

    async def wait_healthy(self) -> dict[str, psutil.Process]:
        await wait_until(
            lambda: "stack is up" in self.process.output, timeout=60, message="stack is up"
        )
        assert await self.all_serving()
        await wait_until(
            lambda: set(self.children()) == set(self.ports), timeout=5, message="all children"
        )
        return self.children()

    def wait_exit(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"sagawire up did not exit:\n{self.process.output}") from None

    def cleanup(self) -> None:
        """Never leave processes behind, even when a test fails."""
        self.process.kill()
        for child in self.seen:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def assert_all_gone(children: dict[str, psutil.Process]) -> None:
    _, alive = psutil.wait_procs(list(children.values()), timeout=10)
    assert not alive, f"still running: {alive}"


async def test_up_serves_every_process_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    up = Up(tmp_path)
    try:
        children = await up.wait_healthy()
        assert set(children) == set(default_names())
        up.process.signal(signal.SIGTERM)
        assert up.wait_exit() == 0, up.process.output
        assert_all_gone(children)
        assert "stack stopped cleanly" in up.process.output
        for name in SERVICE_FILES:
            assert (tmp_path / name).is_file(), f"{name} not under --data"
    finally:
        up.cleanup()


async def test_a_child_killed_is_reported_and_the_stack_exits_non_zero(tmp_path: Path) -> None:
    up = Up(tmp_path)
    try:
        children = await up.wait_healthy()
        children["payment"].kill()
        assert up.wait_exit() == 1
        assert "payment killed by SIGKILL" in up.process.output
        assert_all_gone(children)
    finally:
        up.cleanup()


async def test_restart_brings_a_killed_child_back_and_ctrl_c_stops_all(tmp_path: Path) -> None:
    up = Up(tmp_path, "--restart")
    try:
        children = await up.wait_healthy()
        children["inventory"].kill()
        await wait_until(
            lambda: "inventory is SERVING again" in up.process.output,
            timeout=60,
            message="inventory restarted",
        )
        assert await up.all_serving()
        again = up.children()
        assert again["inventory"].pid != children["inventory"].pid
        up.process.signal(signal.SIGINT)  # what Ctrl-C sends (to the supervisor only)
        assert up.wait_exit() == 0, up.process.output
        assert_all_gone(again)
    finally:
        up.cleanup()


def test_a_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        base = port - 2  # inventory's offset
        args = [str(SAGAWIRE), "up", "--data", str(tmp_path), "--base-port", str(base)]
        result = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"inventory ({port})" in result.stdout

"""A flood of idle streams or connections does not starve the saga path.

The stack runs with small caps (50 streams in all, 30 per caller, 20 unary calls): 300
idle ``Subscribe`` streams from one caller get 30 slots and RESOURCE_EXHAUSTED for the
rest; another caller still subscribes until the total cap; health stays SERVING and a
saga completes meanwhile, because streams have slots of their own beside the unary
calls'. Raw TCP connections beyond the connection cap are closed as they arrive while
the established connections carry on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.certs import OPERATOR
from common.limits import StreamLimiter
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import events_pb2, events_pb2_grpc
from tests.coordinator_support import Stack, running_stack
from tests.support import open_channel, wait_until

SHIPPING = "shipping"  # another caller: a service that subscribes to payment
CAPS = {
    "SAGAWIRE_MAX_STREAMS": "50",
    "SAGAWIRE_MAX_STREAMS_PER_PEER": "30",
    "SAGAWIRE_MAX_CONCURRENT_RPCS": "20",
}


@asynccontextmanager
async def capped_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str
) -> AsyncIterator[Stack]:
    for name, value in {**CAPS, **env}.items():
        monkeypatch.setenv(name, value)
    async with running_stack(tmp_path) as stack:
        yield stack


class Flood:
    """``count`` idle Subscribe streams to ``address`` as ``identity``, over a few channels."""

    def __init__(self, address: str, identity: str, count: int, channels: int = 3) -> None:
        self._channels = [open_channel(address, identity, peer="payment") for _ in range(channels)]
        self.outcomes: Counter[str] = Counter()
        self.messages: set[str] = set()
        self._tasks = [
            asyncio.create_task(self._hold(self._channels[i % channels], i)) for i in range(count)
        ]

    async def _hold(self, channel: grpc.aio.Channel, i: int) -> None:
        stub = events_pb2_grpc.EventStreamStub(channel)
        request = events_pb2.SubscribeRequest(from_sequence=10**9, consumer=f"flood-{i}")
        try:
            async for _ in stub.Subscribe(request):
                pass
        except grpc.aio.AioRpcError as error:
            self.outcomes[error.code().name] += 1
            self.messages.add(error.details() or "")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels:
            await channel.close()


async def serving(address: str) -> int:
    async with open_channel(address, OPERATOR, peer="payment") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return int(reply.status)


async def test_a_flood_of_idle_streams_leaves_health_and_sagas_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with capped_stack(tmp_path, monkeypatch) as stack:
        payment = stack.cluster.servers["payment"]
        limiter = payment.streams
        assert isinstance(limiter, StreamLimiter)
        rss_before = psutil.Process().memory_info().rss
        threads_before = psutil.Process().num_threads()

        flood = Flood(payment.address, OPERATOR, 300)
        try:
            await wait_until(
                lambda: flood.outcomes["RESOURCE_EXHAUSTED"] == 270, timeout=20, message="refusals"
            )
            assert limiter.open[OPERATOR] == 30
            assert sum(flood.outcomes.values()) == 270  # the 30 admitted are still open
            # Another caller has slots of its own, up to the cap on all streams.
            others = Flood(payment.address, SHIPPING, 40)
            try:
                await wait_until(
                    lambda: limiter.total == 50 and sum(others.outcomes.values()) > 0,
                    timeout=20,
                    message="the total cap",
                )
                assert set(others.outcomes) == {"RESOURCE_EXHAUSTED"}
                assert any("50 streams" in m for m in others.messages)

                # Meanwhile the unary calls have their slots: health, and a whole saga.
                assert await serving(payment.address) == health_pb2.HealthCheckResponse.SERVING
                saga = await stack.place(customer="alice", items=[("SKU-MUG", 1)], timeout=20)
                assert saga.status == pb.SAGA_STATUS_COMPLETED
                rss = psutil.Process().memory_info().rss
                threads = psutil.Process().num_threads()
                print(
                    f"flood: 340 streams asked, {limiter.total} open, "
                    f"{dict(flood.outcomes + others.outcomes)};"
                    f" rss +{(rss - rss_before) >> 20} MiB,"
                    f" threads {threads_before} -> {threads}"
                )
            finally:
                await others.close()
        finally:
            await flood.close()
        # Every slot comes back once its stream ends.
        await wait_until(lambda: OPERATOR not in limiter.open, timeout=10, message="released")
        assert SHIPPING not in limiter.open or limiter.open[SHIPPING] <= 1


@contextmanager
def raw_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` TCP connections that never say a word (no TLS handshake)."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def test_connections_beyond_the_cap_are_closed_and_the_saga_path_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with capped_stack(tmp_path, monkeypatch, SAGAWIRE_MAX_CONNECTIONS="20") as stack:
        payment = stack.cluster.servers["payment"]
        # Warm the coordinator's connection to payment (established before the flood).
        await stack.place(customer="alice", items=[("SKU-MUG", 1)])
        with raw_connections(payment.port, 60) as sockets:

            async def beyond_the_cap_closed() -> int:
                closed = await asyncio.to_thread(lambda: sum(map(closed_by_server, sockets)))
                return closed if closed >= 60 - 20 else 0

            closed = await wait_until(beyond_the_cap_closed, timeout=5, message="closed")
            saga = await stack.place(customer="alice", items=[("SKU-MUG", 1)], timeout=20)
            assert saga.status == pb.SAGA_STATUS_COMPLETED
            print(f"connections: 60 raw asked, {closed} closed at once (cap 20)")
        # Once they are gone, new callers get in again.
        await wait_until(
            lambda: _serves(payment.address), timeout=15, message="a new connection is admitted"
        )


async def _serves(address: str) -> bool:
    try:
        return await serving(address) == health_pb2.HealthCheckResponse.SERVING
    except grpc.aio.AioRpcError:
        return False


async def test_streams_closed_by_connection_age_resume_and_choreography_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every connection is sent away after a second and closed half a second later, event
    streams included: the subscribers reconnect from their offsets, nothing is lost or
    applied twice, every choreographed saga completes."""
    monkeypatch.setenv("SAGAWIRE_CONNECTION_AGE_SECONDS", "1")
    monkeypatch.setenv("SAGAWIRE_CONNECTION_AGE_GRACE_SECONDS", "0.5")
    caplog.set_level(logging.INFO, logger="common.stream")
    async with running_stack(tmp_path, mode="choreography") as stack:
        before = await stack.stock("SKU-BOOK")
        first = len(_joined(caplog))
        sagas = []
        for number in range(6):
            # The test's own connection to the coordinator is aged out too: like any
            # client, it places again with the same key when the call was cut.
            reply = await _place_through_cuts(stack, key=f"aged-{number}")
            sagas.append(reply.status)
            await asyncio.sleep(0.5)
        after = await stack.stock("SKU-BOOK")
    assert sagas == [pb.SAGA_STATUS_COMPLETED] * 6
    assert (after[0] - before[0], after[1] - before[1]) == (-6, 6)  # each reserved once
    # Every stream open at the start was cut and came back (each about twice).
    print(f"age: {first} streams at the start, {len(_joined(caplog))} joins in all")
    assert len(_joined(caplog)) >= 2 * first > 0


async def _place_through_cuts(stack: Stack, key: str) -> pb.PlaceOrderResponse:
    for _ in range(5):
        try:
            return await stack.place(customer="alice", items=[("SKU-BOOK", 1)], key=key, timeout=20)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
    raise AssertionError(f"placing {key} was cut five times in a row")


def _joined(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "subscriber joined" in r.getMessage()]

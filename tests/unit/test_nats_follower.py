"""The NATS follower's rules, with fake messages: order, acks, terms and give-ups.

No server: a fetched batch is handed to :meth:`NatsFollower._deliver` as JetStream would
hand it, and the test reads what was handled, acknowledged and terminated.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from common.config import EventSettings
from common.event_transport import Follow
from common.nats_events import NatsEvents, NatsFollower, decode, encode
from common.outbox import MODE_HEADER
from common.tls import Identity
from protos.sagawire.v1 import events_pb2

MAX_DELIVER = 3


@dataclass
class FakeMsg:
    """What the follower reads of a JetStream message, and what it answers."""

    data: bytes
    headers: dict[str, str]
    subject: str = "p.order.choreography.sagawire.order.created"
    delivered: int = 1
    answers: list[str] = field(default_factory=list)

    @property
    def metadata(self) -> SimpleNamespace:
        return SimpleNamespace(
            num_delivered=self.delivered, sequence=SimpleNamespace(stream=7, consumer=7)
        )

    async def ack(self) -> None:
        self.answers.append("ack")

    async def term(self) -> None:
        self.answers.append("term")

    async def in_progress(self) -> None:
        self.answers.append("in_progress")

    async def nak(self) -> None:
        self.answers.append("nak")


def message(
    sequence: int,
    event_type: str = "sagawire.order.created",
    source: str = "order",
    delivered: int = 1,
) -> FakeMsg:
    event = events_pb2.Event(
        id=str(uuid.uuid4()),
        source=source,
        type=event_type,
        subject="saga-1",
        sequence=sequence,
        headers={MODE_HEADER: "choreography", "traceparent": "00-" + "1" * 32 + "-" + "2" * 16},
    )
    payload, headers = encode(event)
    return FakeMsg(payload, headers, delivered=delivered)


class Recorder:
    def __init__(self, poison: Collection[int] = ()) -> None:
        self.poison = poison
        self.batches: list[list[int]] = []
        self.given_up: list[tuple[int, str]] = []

    async def handle(self, events: Sequence[events_pb2.Event]) -> set[str]:
        self.batches.append([e.sequence for e in events])
        return {e.id for e in events if e.sequence in self.poison}

    async def give_up(self, event: events_pb2.Event, why: str) -> None:
        self.given_up.append((event.sequence, why))


def follower(recorder: Recorder, types: Sequence[str] = ()) -> NatsFollower:
    async def next_sequence() -> int:
        return 1

    events = NatsEvents(
        EventSettings(events="nats://127.0.0.1:1", events_max_deliver=MAX_DELIVER),
        Identity.from_env("inventory"),
    )
    return NatsFollower(
        events,
        Follow(
            producer="order",
            address="",
            consumer="inventory",
            types=types,
            next_sequence=next_sequence,
            handle=recorder.handle,
            match_headers={MODE_HEADER: "choreography"},
            give_up=recorder.give_up,
        ),
    )


def test_an_event_travels_with_its_headers_as_nats_headers() -> None:
    sent = message(4)
    assert sent.headers["Nats-Msg-Id"] and sent.headers["Sagawire-Sequence"] == "4"
    assert "traceparent" in sent.headers
    assert not events_pb2.Event.FromString(sent.data).headers  # not in the payload twice
    received = decode(sent)  # type: ignore[arg-type]
    assert received.sequence == 4
    assert dict(received.headers) == {
        MODE_HEADER: "choreography",
        "traceparent": sent.headers["traceparent"],
    }


async def test_a_batch_is_handled_in_order_then_acknowledged() -> None:
    recorder = Recorder()
    batch = [message(1), message(2), message(3)]
    await follower(recorder)._deliver(batch)  # type: ignore[arg-type]
    assert recorder.batches == [[1, 2, 3]]
    assert [m.answers for m in batch] == [["ack"], ["ack"], ["ack"]]


async def test_an_event_the_handler_recorded_as_poison_is_terminated() -> None:
    recorder = Recorder(poison={2})
    batch = [message(1), message(2), message(3)]
    await follower(recorder)._deliver(batch)  # type: ignore[arg-type]
    assert [m.answers for m in batch] == [["ack"], ["term"], ["ack"]]


async def test_types_not_followed_are_acknowledged_without_handling() -> None:
    recorder = Recorder()
    batch = [message(1), message(2, "sagawire.order.approved"), message(3)]
    await follower(recorder, types=["sagawire.order.created"])._deliver(batch)  # type: ignore[arg-type]
    assert recorder.batches == [[1, 3]]
    assert [m.answers for m in batch] == [["ack"], ["ack"], ["ack"]]


async def test_given_up_events_are_recorded_after_the_ones_before_them_were_handled() -> None:
    recorder = Recorder()
    garbage = FakeMsg(b"\xff\xff", {"Nats-Msg-Id": "junk", "Sagawire-Sequence": "3"})
    batch = [
        message(1),
        message(2, delivered=MAX_DELIVER + 1),  # its follower died on it every time
        garbage,
        message(4, source="payment"),  # forged: not order's
        message(5),
    ]
    await follower(recorder)._deliver(batch)  # type: ignore[arg-type]
    assert recorder.batches == [[1], [5]]
    assert [seq for seq, _ in recorder.given_up] == [2, 3, 4]
    reasons = [why for _, why in recorder.given_up]
    assert "delivered 4 times" in reasons[0]
    assert reasons[1].startswith("not an event")
    assert "published by 'payment'" in reasons[2]
    assert [m.answers for m in batch] == [["ack"], ["term"], ["term"], ["term"], ["ack"]]


async def test_a_follower_stopped_mid_batch_hands_the_messages_back_at_once() -> None:
    started = asyncio.Event()

    async def never_done(events: Sequence[events_pb2.Event]) -> set[str]:
        started.set()
        await asyncio.Event().wait()
        return set()

    recorder = Recorder()
    recorder.handle = never_done  # type: ignore[method-assign]
    batch = [message(1), message(2)]
    delivering = asyncio.create_task(follower(recorder)._deliver(batch))  # type: ignore[arg-type]
    await started.wait()
    delivering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await delivering
    assert [m.answers for m in batch] == [["nak"], ["nak"]]

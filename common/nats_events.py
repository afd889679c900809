"""Events over NATS JetStream: a relay per producer, a durable consumer per follower.

Selected by ``SAGAWIRE_EVENTS=nats://host:4222`` (common/event_transport.py). The
transactional outbox stays the source of truth; this module only carries what it
committed.

**Stream and subjects.** One stream per stack, named by ``SAGAWIRE_EVENTS_PREFIX``
(default ``sagawire``), holding ``<prefix>.<producer>.<saga mode>.<event type>``, e.g.
``sagawire.order.choreography.sagawire.order.created``: a follower of one producer's
choreographed events filters on ``<prefix>.order.choreography.>`` and is sent nothing
else. Stacks sharing a server keep apart by prefix. The stream (file storage) and every
consumer are created at start if missing, and creating them again is a no-op.

**The relay** (:class:`NatsRelay`, one per producer) reads committed outbox events in
sequence order, publishes each with ``Nats-Msg-Id`` = the event id and waits for the
stream's acknowledgements, then moves its position, stored in the producer's own store
(``outbox_relay``) in the background. A relay that dies before its position is stored
publishes those events again after its restart; JetStream drops them as duplicates
(within the stream's duplicate window), and a consumer that still saw one skips it
through its inbox. The relay is a reader of the outbox like a stream follower, so
retention never prunes an event it has not published.

**A follower** (:class:`NatsFollower`) is a durable pull consumer named
``<consumer>-<producer>`` with explicit acknowledgement. It hands each fetched batch,
in stream order, to its handler (the inbox's :class:`common.inbox.Consumer`, which
applies each event exactly once and retries a transiently failing one in place, or the
coordinator's observer) and acknowledges the batch only after the handler returned,
that is after the effects committed; while the handler works, the messages are kept
from redelivery (``in_progress``), and a follower stopped mid-batch hands them back
(``nak``) for its successor to have at once. An event the handler recorded as poison is
terminated (``term``) instead of acknowledged; so is one that cannot be decoded, and
one delivered ``SAGAWIRE_EVENTS_MAX_DELIVER`` times without an acknowledgement (its
follower died or hung on it each time): those two are recorded as poison first.

**Headers.** An event's own headers (the trace context, ``saga-mode``) travel as NATS
headers, beside ``Nats-Msg-Id`` and ``Sagawire-Sequence`` (its outbox sequence); the
payload is the event without them. The follower puts them back, so the reaction's span
continues the producer's trace as over gRPC.

**Who may publish or subscribe** is NATS's to enforce: give each service a NATS user
allowed to publish only ``<prefix>.<its name>.>`` and to consume from the stream (the
README shows one), with ``tls://`` URLs (the stack's certificates are presented) or a
credentials file (``SAGAWIRE_EVENTS_CREDENTIALS``). A follower also refuses, as poison,
an event whose source is not the producer its subject names.

**Consumer lag.** Each relay reads its consumers' ``num_pending`` and
``num_ack_pending`` from JetStream every few seconds and adds the events it has not
published yet: ``sagawire.consumer.lag`` and ``sagawire.outbox.backlog`` as over gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Collection, Sequence
from functools import partial
from typing import Any

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from common.admin import StreamCuts
from common.config import EventSettings
from common.errors import Transient
from common.event_transport import Follow
from common.outbox import MODE_HEADER, Outbox
from common.store import Connection, Store, utc_now
from common.tls import Identity, load_material
from protos.sagawire.v1 import events_pb2

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
SEQUENCE_HEADER = "Sagawire-Sequence"
# Events published per round of the relay, and fetched per round of a follower.
BATCH_SIZE = 256
# A fetch with nothing to deliver ends after this long, and is asked again.
FETCH_WAIT_SECONDS = 5.0
# Once a message came, the ones the stream already holds behind it (its metadata says
# how many) are fetched with it; this long at most.
GATHER_SECONDS = 1.0
# Unacknowledged messages are redelivered after this long; a follower still working
# on them says so every quarter of it. It is how long the messages a follower held when
# it died (SIGKILL) wait for its successor: short, since a redelivery costs only an
# inbox look-up.
ACK_WAIT_SECONDS = 4.0
# An idle relay re-reads the outbox this often, a safety net for a missed wake-up.
IDLE_RECHECK_SECONDS = 5.0
# How long the relay waits for a round's acknowledgements before starting over.
PUBLISH_TIMEOUT_SECONDS = 10.0
# JetStream drops a re-published message id seen within this window.
DUPLICATE_WINDOW_SECONDS = 120.0
# The relay stores its position at most this often: a write (and an fsync) per published
# round would cost more than the publishing; what a crash makes it publish again, the
# stream drops as duplicates.
POSITION_SAVE_SECONDS = 1.0
# How often each relay reads its consumers' lag from JetStream.
LAG_POLL_SECONDS = 5.0
# Errors after which a relay or follower starts over (from the outbox position, or from
# the consumer's acknowledgements), after a jittered backoff.
RETRIED = (nats.errors.Error, OSError, asyncio.TimeoutError, Transient)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

# Where each stream's relay is: the last outbox sequence the stream acknowledged (one
# statement: it runs inside the store's transaction, where executescript may not).
RELAY_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox_relay (
    stream       TEXT PRIMARY KEY,
    sequence     INTEGER NOT NULL,
    published_at TEXT NOT NULL
);
"""


def _token(value: str) -> str:
    """``value`` as one subject token (or a part of a consumer name)."""
    return _UNSAFE.sub("_", value) or "_"


def _type_tokens(event_type: str) -> str:
    """An event type as subject tokens: its dots separate tokens, nothing else may."""
    return ".".join(_token(part) for part in event_type.split("."))


def _retrying(retried: type[BaseException] | tuple[type[BaseException], ...]) -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception_type(retried),
        wait=wait_random_exponential(multiplier=0.1, max=2.0),
        reraise=True,
    )


def encode(event: events_pb2.Event) -> tuple[bytes, dict[str, str]]:
    """The payload (the event without its headers) and the NATS headers of ``event``."""
    bare = events_pb2.Event(
        id=event.id,
        source=event.source,
        type=event.type,
        subject=event.subject,
        sequence=event.sequence,
        time=event.time,
        data=event.data,
    )
    headers = dict(event.headers)
    headers[MSG_ID_HEADER] = event.id
    headers[SEQUENCE_HEADER] = str(event.sequence)
    return bare.SerializeToString(), headers


def decode(msg: Msg) -> events_pb2.Event:
    """The event a relay published (DecodeError when the payload is not one)."""
    event = events_pb2.Event.FromString(msg.data)
    for key, value in (msg.headers or {}).items():
        if key != SEQUENCE_HEADER and not key.startswith("Nats-"):
            event.headers[key] = value
    return event


def _undecodable(producer: str, msg: Msg) -> events_pb2.Event:
    """What can be told of a message that is not an event, to record it as poison."""
    headers = msg.headers or {}
    sequence = headers.get(SEQUENCE_HEADER, "")
    return events_pb2.Event(
        id=headers.get(MSG_ID_HEADER, f"nats-{msg.metadata.sequence.stream}"),
        source=producer,
        type=msg.subject,
        sequence=int(sequence) if sequence.isdigit() else 0,
    )


class NatsEvents:
    """One process's connection to NATS JetStream, its relays and its followers."""

    name = "nats"
    # An event a follower took and never acknowledged comes again after the ack wait,
    # possibly after later ones: the inbox, not the offset, tells what was applied.
    in_order = False

    def __init__(self, settings: EventSettings, identity: Identity) -> None:
        self.servers = [url.strip() for url in settings.events.split(",")]
        self.prefix = settings.events_prefix
        self.stream = settings.events_prefix
        self.max_deliver = settings.events_max_deliver
        self._max_age = settings.events_max_age
        self._credentials = settings.events_credentials
        self._identity = identity
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._stream_ready = False
        self._lock = asyncio.Lock()

    def subject(self, event: events_pb2.Event) -> str:
        mode = event.headers.get(MODE_HEADER) or "none"
        return f"{self.prefix}.{_token(event.source)}.{_token(mode)}.{_type_tokens(event.type)}"

    def filter_subject(self, producer: str, mode: str | None) -> str:
        """What a follower of ``producer``'s events of saga ``mode`` (any: None) is sent."""
        if mode is None:
            return f"{self.prefix}.{_token(producer)}.>"
        return f"{self.prefix}.{_token(producer)}.{_token(mode)}.>"

    async def open(self) -> None:
        """Nothing to wait for: relays and followers connect when they start (and keep
        trying while the server is down)."""

    async def close(self) -> None:
        client, self._client, self._js = self._client, None, None  # None: closed on purpose
        self._stream_ready = False
        if client is not None and not client.is_closed:
            with contextlib.suppress(Exception):
                await client.close()

    async def jetstream(self) -> JetStreamContext:
        """The JetStream context, connected and with the stream in place."""
        async with self._lock:
            if self._client is None or self._client.is_closed:
                self._client = await self._connect()
                self._js = self._client.jetstream(timeout=PUBLISH_TIMEOUT_SECONDS)
                self._stream_ready = False
            assert self._js is not None
            if not self._stream_ready:
                await self._ensure_stream(self._js)
                self._stream_ready = True
            return self._js

    async def _connect(self, reconnect: bool = True) -> Client:
        """A connection that waits for the server and reconnects forever; or, without
        ``reconnect``, one attempt (for a command that does one thing and ends)."""
        options: dict[str, Any] = {}
        if not reconnect:
            options.update(allow_reconnect=False, max_reconnect_attempts=0)
        if any(url.startswith("tls://") for url in self.servers):
            options["tls"] = self._tls_context()
        if self._credentials is not None:
            options["user_credentials"] = str(self._credentials)
        disconnected_at: list[float] = []

        async def disconnected() -> None:
            if self._client is None or self._client.is_closed:
                return  # closed on purpose
            disconnected_at.append(time.monotonic())
            log.warning("NATS connection lost servers=%s, reconnecting", ",".join(self.servers))

        async def reconnected() -> None:
            down = time.monotonic() - disconnected_at.pop() if disconnected_at else 0.0
            log.info("NATS connection back after_seconds=%.1f", down)

        async def error(problem: Exception) -> None:
            log.debug("NATS client error: %s", problem)

        client: Client = await nats.connect(
            self.servers,
            name=f"sagawire-{self._identity.name}",
            connect_timeout=2,
            reconnect_time_wait=1,
            **{"max_reconnect_attempts": -1, **options},  # -1: waits for a server not up yet
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        log.info("connected to NATS servers=%s stream=%s", ",".join(self.servers), self.stream)
        return client

    def _tls_context(self) -> ssl.SSLContext:
        """The process's own certificate, and the stack's CA to verify the server by."""
        material = load_material(self._identity.settings, self._identity.name)
        context = ssl.create_default_context(cadata=material.ca.decode())
        _, cert, key = self._identity.settings.files(self._identity.name)
        context.load_cert_chain(cert, key)
        return context

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.>"],
            storage=StorageType.FILE,
            max_age=self._max_age,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # It exists with other limits (another version set them): ours from now on.
            await js.update_stream(config)

    def relay(
        self, source: str, outbox: Outbox, db: Store, cuts: StreamCuts | None = None
    ) -> NatsRelay:
        return NatsRelay(self, source, outbox, db, cuts)

    def follower(self, follow: Follow) -> NatsFollower:
        return NatsFollower(self, follow)


class NatsLags:
    """A producer's consumer lags as JetStream last reported them (read on the metric
    reader's thread: the dict is replaced whole, never changed in place)."""

    def __init__(self) -> None:
        self._lags: dict[str, int] = {}

    def lags(self) -> dict[str, int]:
        return self._lags

    def update(self, lags: dict[str, int]) -> None:
        self._lags = lags


class NatsRelay:
    """Publishes one producer's committed outbox events to the stream, in order."""

    def __init__(
        self,
        events: NatsEvents,
        source: str,
        outbox: Outbox,
        db: Store,
        cuts: StreamCuts | None = None,
    ) -> None:
        self._events = events
        self._source = source
        self._outbox = outbox
        self._db = db
        # Admin.CutStreams (a chaos drill) restarts the relay from its stored position:
        # what it publishes again, the stream drops as duplicates.
        self._cuts = cuts or StreamCuts()
        self.lags = NatsLags()
        self.published = 0  # the last outbox sequence the stream acknowledged
        self._moved = asyncio.Event()  # ``published`` moved since it was last stored
        self._reader = f"nats-relay-{events.stream}"

    async def run(self) -> None:
        """Publish forever, starting over from the stored position after any failure."""
        await self._db.transaction(lambda conn: conn.execute(RELAY_SCHEMA))
        self.published = await self._db.read(self._position)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._keep_publishing(), name=f"relay-{self._source}")
            tasks.create_task(self._keep_saving(), name=f"relay-position-{self._source}")
            tasks.create_task(self._keep_reading_lags(), name=f"relay-lags-{self._source}")

    async def _keep_saving(self) -> None:
        """Store the position as it moves, at most once a second, off the publishing path
        (a commit per round would put an fsync before every next event). A position not
        yet stored when the process dies costs a re-publish the stream drops."""
        saved = self.published
        while True:
            await self._moved.wait()
            self._moved.clear()
            position = self.published
            if position <= saved:
                continue
            try:
                await self._db.transaction(partial(self._save, sequence=position))
                saved = position
            except Exception as error:  # a busy store: the next move tries again
                log.warning("relay position not saved producer=%s: %r", self._source, error)
                self._moved.set()
            await asyncio.sleep(POSITION_SAVE_SECONDS)

    async def _keep_publishing(self) -> None:
        # Whatever stops it (the broker, the store), a stopped relay would stop every
        # saga the services carry: it starts over, and says why.
        async for attempt in _retrying(Exception):
            with attempt:
                try:
                    await self._publish()
                except RETRIED as error:
                    log.warning(
                        "relay to NATS interrupted producer=%s published=%d error=%s",
                        self._source,
                        self.published,
                        repr(error),
                    )
                    raise
                except Exception:
                    log.exception("relay to NATS failed producer=%s", self._source)
                    raise

    def _position(self, conn: Connection) -> int:
        row = conn.execute(
            "SELECT sequence FROM outbox_relay WHERE stream = ?", (self._events.stream,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _save(self, conn: Connection, sequence: int) -> None:
        conn.execute(
            "INSERT INTO outbox_relay (stream, sequence, published_at) VALUES (?, ?, ?)"
            " ON CONFLICT (stream) DO UPDATE SET sequence = excluded.sequence,"
            " published_at = excluded.published_at",
            (self._events.stream, sequence, utc_now().isoformat()),
        )

    async def _publish(self) -> None:
        js = await self._events.jetstream()
        position = self.published = await self._db.read(self._position)
        generation = self._cuts.generation
        self._cuts.open += 1
        try:
            await self._publish_from(js, position, generation)
        finally:
            self._cuts.open -= 1

    async def _publish_from(self, js: JetStreamContext, position: int, generation: int) -> None:
        while not self._outbox.closed:
            if self._cuts.generation != generation:
                raise Transient("the relay was cut by an operator")
            seen = self._outbox.stamp()
            events, scanned, complete = await self._outbox.read_notified(
                position + 1, BATCH_SIZE, reader=self._reader
            )
            if events:
                pending = []
                for event in events:
                    payload, headers = encode(event)
                    pending.append(
                        await js.publish_async(
                            self._events.subject(event), payload, headers=headers
                        )
                    )
                async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                    await asyncio.gather(*pending)
            if scanned > position:
                position = self.published = scanned
                self._moved.set()  # saved in the background: see _keep_saving
            if complete:
                await self._outbox.wait_for_commit(seen, IDLE_RECHECK_SECONDS)

    async def _keep_reading_lags(self) -> None:
        prefix = self._events.filter_subject(self._source, None)[:-1]  # "<prefix>.<source>."
        suffix = f"-{_token(self._source)}"
        while True:
            await asyncio.sleep(LAG_POLL_SECONDS)
            try:
                js = await self._events.jetstream()
                infos = await js.consumers_info(self._events.stream)
                unpublished = max(await self._outbox.last_sequence() - self.published, 0)
            except Exception as error:  # a metric: never worth stopping the relay for
                log.debug("cannot read consumer lag producer=%s: %r", self._source, error)
                self.lags.update({})
                continue
            self.lags.update(
                {
                    info.name.removesuffix(suffix): unpublished
                    + (info.num_pending or 0)
                    + (info.num_ack_pending or 0)
                    for info in infos
                    if (info.config.filter_subject or "").startswith(prefix)
                }
            )


class NatsFollower:
    """A durable JetStream consumer of one producer's events (see the module doc)."""

    def __init__(self, events: NatsEvents, follow: Follow) -> None:
        self._events = events
        self._follow = follow
        self._types = frozenset(follow.types)
        self._headers = {k: v for k, v in follow.match_headers.items() if k != MODE_HEADER}
        self._mode = follow.match_headers.get(MODE_HEADER)
        self.durable = f"{_token(follow.consumer)}-{_token(follow.producer)}"
        self.connected = asyncio.Event()

    @property
    def producer(self) -> str:
        return self._follow.producer

    async def run(self) -> None:
        """Follow forever, binding again after any failure; ends only when cancelled."""
        async for attempt in _retrying(RETRIED):
            with attempt:
                try:
                    await self._consume()
                except RETRIED as error:
                    log.warning(
                        "NATS consumer interrupted consumer=%s error=%s",
                        self.durable,
                        repr(error),
                    )
                    raise

    async def _bind(self) -> JetStreamContext.PullSubscription:
        js = await self._events.jetstream()
        config = ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            filter_subject=self._events.filter_subject(self._follow.producer, self._mode),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_SECONDS,
            max_deliver=-1,  # the budget is ours: see _deliver
            max_ack_pending=BATCH_SIZE * 4,
        )
        try:
            await js.add_consumer(self._events.stream, config)
        except nats.js.errors.BadRequestError as error:
            # It exists with other settings (e.g. from an older version): use it as it is.
            log.warning("NATS consumer kept as it is consumer=%s: %s", self.durable, error)
        return await js.pull_subscribe_bind(self.durable, stream=self._events.stream)

    async def _consume(self) -> None:
        subscription = await self._bind()
        self.connected.set()
        try:
            while True:
                # One message, as soon as there is one; then those already behind it. A
                # single fetch of a whole batch would hold the first message until the
                # batch filled or the fetch expired.
                try:
                    messages = await subscription.fetch(1, timeout=FETCH_WAIT_SECONDS)
                except TimeoutError:  # nats' own, or asyncio's when the wait ran out
                    continue  # nothing new
                behind = min(messages[-1].metadata.num_pending or 0, BATCH_SIZE - 1)
                if behind:
                    with contextlib.suppress(TimeoutError):
                        messages += await subscription.fetch(behind, timeout=GATHER_SECONDS)
                await self._deliver(messages)
        finally:
            self.connected.clear()
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    def _wanted(self, event: events_pb2.Event) -> bool:
        if self._types and event.type not in self._types:
            return False
        return not self._headers or self._headers.items() <= dict(event.headers).items()

    async def _deliver(self, messages: Sequence[Msg]) -> None:
        """Hand the messages over in order, then acknowledge (or terminate) each one.

        A message given up on is recorded after the ones before it were handled, so the
        handler always sees a producer's events in order."""
        run: list[tuple[Msg, events_pb2.Event]] = []
        for msg in messages:
            refusal, event = self._refusal(msg)
            if refusal is None and event is not None and not self._wanted(event):
                await msg.ack()  # not followed here: nothing to do
                continue
            if refusal is None and event is not None:
                run.append((msg, event))
                continue
            await self._handle(run)
            run = []
            assert event is not None
            log.error(
                "event given up consumer=%s sequence=%d id=%s: %s",
                self.durable,
                event.sequence,
                event.id,
                refusal,
            )
            if self._follow.give_up is not None:
                await self._follow.give_up(event, refusal or "")
            await msg.term()
        await self._handle(run)

    def _refusal(self, msg: Msg) -> tuple[str | None, events_pb2.Event | None]:
        """Why the message is given up on without handling it (None: it is not), and
        the event it holds (or what can be told of it)."""
        try:
            event = decode(msg)
        except DecodeError as error:
            return f"not an event: {error}", _undecodable(self._follow.producer, msg)
        if event.source != self._follow.producer:
            return (
                f"published by {event.source!r} under {self._follow.producer!r}'s subject",
                event,
            )
        delivered = msg.metadata.num_delivered or 1
        if delivered > self._events.max_deliver:
            return f"delivered {delivered} times without being acknowledged", event
        return None, event

    async def _handle(self, run: Sequence[tuple[Msg, events_pb2.Event]]) -> None:
        if not run:
            return
        try:
            async with asyncio.TaskGroup() as tasks:
                keeping = tasks.create_task(self._keep_in_progress([m for m, _ in run]))
                try:
                    poisoned: Collection[str] = await self._follow.handle([e for _, e in run]) or ()
                finally:
                    keeping.cancel()
        except asyncio.CancelledError:
            # Stopping mid-batch: hand the messages back now rather than after the ack
            # wait, so the next follower (this service restarted) has them at once. What
            # was committed is in the inbox.
            for msg, _ in run:
                with contextlib.suppress(Exception):
                    await msg.nak()
            raise
        for msg, event in run:
            if event.id in poisoned:
                await msg.term()
            else:
                await msg.ack()

    @staticmethod
    async def _keep_in_progress(messages: Sequence[Msg]) -> None:
        """While the handler works (a transient failure may be retried for long), keep
        JetStream from redelivering the messages."""
        while True:
            await asyncio.sleep(ACK_WAIT_SECONDS / 4)
            for msg in messages:
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()


async def delete_stream(settings: EventSettings, identity: Identity) -> None:
    """Delete the stream the settings name, with its consumers (a bench's or a chaos
    pass's own, once its stack stopped); nothing if it is not there."""
    events = NatsEvents(settings, identity)
    client = await events._connect(reconnect=False)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await client.jetstream().delete_stream(events.stream)
    finally:
        await client.close()

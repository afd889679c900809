"""What only the shared PostgreSQL saga log has: migrations, leases, fencing, take-over,
idempotency keys across replicas, notifications between replicas, the observer's role.

Two or three :class:`PostgresSagaLog` objects on one schema stand for replicas (each its
own pool, lanes and listener, as separate processes would have); short leases make
expiry quick. The contract every adapter keeps is tests/unit/test_saga_log.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from coordinator.log.postgres import OBSERVER_ROLE, PostgresSagaLog
from coordinator.log.postgres_migrations import MIGRATIONS, Migration
from coordinator.log.records import Change, Kind, NewSaga, SagaStatus
from coordinator.log.saga_log import IdempotencyConflict, LeaseLost, OwnedElsewhere
from tests.postgres_support import POSTGRES_URL, fresh_schema
from tests.support import wait_until

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
Replicas = Callable[..., Awaitable[PostgresSagaLog]]


@pytest.fixture
async def replicas() -> AsyncIterator[Replicas]:
    """Opens replicas of one log on a fresh schema; closes them all at the end."""
    async with AsyncExitStack() as stack:
        schema = await stack.enter_async_context(fresh_schema())

        async def replica(
            name: str, lease_seconds: float = 30.0, migrations: tuple[Migration, ...] = MIGRATIONS
        ) -> PostgresSagaLog:
            log = PostgresSagaLog(
                POSTGRES_URL,
                schema,
                replica=name,
                lease_seconds=lease_seconds,
                migrations=migrations,
            )
            await log.open()
            stack.push_async_callback(log.close)
            return log

        yield replica


def new_saga(key: str = "", request_hash: str = "h1") -> NewSaga:
    return NewSaga(
        saga_id=str(uuid.uuid4()),
        definition="place_order",
        mode="orchestration",
        data=b"\x01",
        step_names=("create_order", "reserve_stock"),
        created_at=T0,
        deadline=T0 + timedelta(seconds=30),
        idempotency_key=key,
        request_hash=request_hash,
    )


def note(detail: str) -> Change:
    return Change(Kind.SAGA_RESUMED, datetime.now(UTC), detail=detail)


async def rows(log: PostgresSagaLog, query: str, *params: object) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(
        POSTGRES_URL, options=f"-c search_path={log.schema}"
    ) as conn:
        cursor = await conn.execute(query, params)
        return await cursor.fetchall()


async def expire(log: PostgresSagaLog, saga_id: str) -> None:
    """As if its owner stopped renewing long ago."""
    async with await psycopg.AsyncConnection.connect(
        POSTGRES_URL, autocommit=True, options=f"-c search_path={log.schema}"
    ) as conn:
        await conn.execute(
            "UPDATE sagas SET lease_until = now() - interval '1 second' WHERE saga_id = %s",
            (saga_id,),
        )


async def test_replicas_starting_together_migrate_once_and_later_migrations_apply(
    replicas: Replicas,
) -> None:
    first, _, third = await asyncio.gather(replicas("a"), replicas("b"), replicas("c"))
    assert await rows(first, "SELECT version FROM schema_migrations") == [(1,)]
    extra = Migration(2, "a later change", "ALTER TABLE sagas ADD COLUMN note text")
    later = await replicas("d", migrations=(*MIGRATIONS, extra))
    again = await replicas("e", migrations=(*MIGRATIONS, extra))
    versions = await rows(later, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert versions == [(1, "saga log with leases"), (2, "a later change")]
    record, created = await again.create(new_saga())
    assert created and await third.load(record.saga_id) == record


async def test_a_stale_owner_is_fenced_off_after_a_take_over(replicas: Replicas) -> None:
    a, b = await replicas("a"), await replicas("b")
    lost: list[str] = []
    a.on_lease_lost(lost.append)
    record, _ = await a.create(new_saga())
    saga_id = record.saga_id
    assert a.holds(saga_id) and not b.holds(saga_id)
    await a.append(saga_id, note("a drives"))
    # b may not write while a's lease is live, nor take the saga over.
    with pytest.raises(OwnedElsewhere):
        await b.append(saga_id, note("b interferes"))
    assert await b.claim_unfinished() == []
    # a stops renewing (paused): the lease expires, b takes the saga over.
    await expire(a, saga_id)
    (taken,) = await b.claim_unfinished()
    assert taken.saga_id == saga_id and taken.last_seq == 2 and b.holds(saga_id)
    await b.append(saga_id, note("b drives"))
    # a wakes up and writes: refused, and a learns it lost the saga.
    with pytest.raises(LeaseLost):
        await a.append(saga_id, note("a again"))
    assert lost == [saga_id] and not a.holds(saga_id) and a.refused == 1
    await b.append(saga_id, note("b goes on"))
    history = await rows(
        a, "SELECT seq, writer, fence FROM transitions WHERE saga_id = %s ORDER BY seq", saga_id
    )
    assert history == [(1, "a", 1), (2, "a", 1), (3, "b", 2), (4, "b", 2)]


async def test_renewal_keeps_a_lease_and_detects_a_lost_one(replicas: Replicas) -> None:
    a, b = await replicas("a", lease_seconds=1.0), await replicas("b", lease_seconds=1.0)
    kept, _ = await a.create(new_saga())
    taken, _ = await a.create(new_saga())
    for _ in range(3):  # past the lease, renewed each third of it
        await asyncio.sleep(0.35)
        assert await a.renew_leases() == []
    assert await b.claim_unfinished() == []
    await expire(a, taken.saga_id)
    assert [r.saga_id for r in await b.claim_unfinished()] == [taken.saga_id]
    assert await a.renew_leases() == [taken.saga_id]
    assert a.holds(kept.saga_id) and not a.holds(taken.saga_id)


async def test_released_sagas_are_taken_over_at_once_or_left_alone(replicas: Replicas) -> None:
    a, b = await replicas("a"), await replicas("b")
    stopped, _ = await a.create(new_saga())
    handed, _ = await a.create(new_saga())
    a.release(stopped.saga_id, take_over=True)  # e.g. shutdown: to be driven on
    a.release(handed.saga_id)  # e.g. carried on by the services: nobody drives it
    await a.renew_leases()  # releases go out with the next pass
    assert [r.saga_id for r in await b.claim_unfinished()] == [stopped.saga_id]
    # A write by a replica without the lease takes a free one (RetrySaga on any replica).
    await b.append(handed.saga_id, note("retried on b"))
    assert b.holds(handed.saga_id)


async def test_a_restarted_replica_takes_its_own_sagas_back_at_once(replicas: Replicas) -> None:
    a = await replicas("stable-name")
    record, _ = await a.create(new_saga())
    # a dies without a word (its lease is live); it comes back under the same name.
    again = await replicas("stable-name")
    other = await replicas("other")
    assert await other.claim_unfinished() == []
    assert [r.saga_id for r in await again.claim_unfinished()] == [record.saga_id]
    with pytest.raises(LeaseLost):  # the old incarnation, if it still ran, is fenced off
        await a.append(record.saga_id, note("old incarnation"))


async def test_an_idempotency_key_names_one_saga_across_replicas(replicas: Replicas) -> None:
    a, b = await replicas("a"), await replicas("b")
    results = await asyncio.gather(
        *(log.create(new_saga(key="order-7")) for log in (a, b, a, b, b))
    )
    assert len({record.saga_id for record, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    with pytest.raises(IdempotencyConflict):
        await b.create(new_saga(key="order-7", request_hash="other"))
    assert await rows(a, "SELECT count(*) FROM sagas") == [(1,)]


async def test_a_replica_hears_the_changes_another_one_writes(replicas: Replicas) -> None:
    a, b = await replicas("a"), await replicas("b")
    record, _ = await a.create(new_saga())
    with b.listen(record.saga_id) as listener:
        await a.append(record.saga_id, note("one"))
        await asyncio.wait_for(listener.changed.wait(), 5)
        listener.changed.clear()
        done = Change(Kind.SAGA_COMPLETED, datetime.now(UTC), saga_status=SagaStatus.COMPLETED)
        await a.append(record.saga_id, done)
        await asyncio.wait_for(listener.changed.wait(), 5)
        assert listener.status is SagaStatus.COMPLETED


async def test_one_replica_observes_and_a_stale_observer_is_fenced(replicas: Replicas) -> None:
    a, b = await replicas("a", lease_seconds=0.5), await replicas("b", lease_seconds=0.5)
    record, _ = await a.create(dataclasses.replace(new_saga(), mode="choreography"))
    a.release(record.saga_id)  # handed to the services: the observer records the rest
    await a.renew_leases()
    assert await a.hold_role(OBSERVER_ROLE)
    assert not await b.hold_role(OBSERVER_ROLE)
    with a.as_observer():
        await a.append(record.saga_id, note("observed by a"))
    await a.save_observer_offset("inventory", 7)
    # a stops renewing its role: b takes it over once it expires.
    await wait_until(lambda: b.hold_role(OBSERVER_ROLE), timeout=5, message="b observes")
    assert await b.observer_offset("inventory") == 8
    with a.as_observer(), pytest.raises(LeaseLost):
        await a.append(record.saga_id, note("a observes still"))
    with pytest.raises(LeaseLost):
        await a.save_observer_offset("inventory", 9)
    assert not await a.hold_role(OBSERVER_ROLE)  # a finds out at its next renewal
    with b.as_observer():
        await b.append(record.saga_id, note("observed by b"))
    assert await b.observer_offset("inventory") == 8

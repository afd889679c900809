"""What a console asks the coordinator, against a real stack: sagas filtered by
definition, mode and time; counts by status; the definitions and their graphs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

from common.tokens import Role
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import participant_pb2
from tests.coordinator_support import api_token, running_stack
from tests.integration.test_api_tokens import refused


def stamp(when: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(when)
    return value


async def test_sagas_are_filtered_counted_and_their_definitions_listed(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        done = await stack.place("alice")
        declined = await stack.place("carol", items=[("SKU-LAMP", 1)])
        middle = datetime.now(UTC)
        later = await stack.place("bob")
        assert declined.status == pb.SAGA_STATUS_COMPENSATED

        async def listed(request: pb.ListSagasRequest) -> list[str]:
            return [s.saga_id for s in (await stack.api.ListSagas(request)).sagas]

        everything = pb.SagaFilter(saga="place_order", mode=participant_pb2.SAGA_MODE_ORCHESTRATION)
        assert await listed(pb.ListSagasRequest(filter=everything)) == [
            later.saga_id,
            declined.saga_id,
            done.saga_id,
        ]
        assert await listed(pb.ListSagasRequest(filter=pb.SagaFilter(saga="return_nothing"))) == []
        chor = pb.SagaFilter(mode=participant_pb2.SAGA_MODE_CHOREOGRAPHY)
        assert await listed(pb.ListSagasRequest(filter=chor)) == []
        since = pb.SagaFilter(created_after=stamp(middle))
        assert await listed(pb.ListSagasRequest(filter=since)) == [later.saga_id]
        until = pb.SagaFilter(created_before=stamp(middle))
        first = await stack.api.ListSagas(pb.ListSagasRequest(filter=until, page_size=1))
        rest = await stack.api.ListSagas(
            pb.ListSagasRequest(filter=until, page_size=1, page_token=first.next_page_token)
        )
        assert [s.saga_id for s in [*first.sagas, *rest.sagas]] == [
            declined.saga_id,
            done.saga_id,
        ]
        compensated = pb.ListSagasRequest(status=pb.SAGA_STATUS_COMPENSATED, filter=everything)
        assert await listed(compensated) == [declined.saga_id]

        counts = await stack.api.CountSagas(pb.CountSagasRequest())
        assert {c.status: c.count for c in counts.counts} == {
            pb.SAGA_STATUS_COMPLETED: 2,
            pb.SAGA_STATUS_COMPENSATED: 1,
        }
        assert counts.total == 3
        recent = await stack.api.CountSagas(pb.CountSagasRequest(filter=since))
        assert recent.total == 1

        # A customer sees the definitions (its own sagas show their steps anyway) and
        # its own sagas through the same filters, but no counts of everyone's.
        alice = stack.api_as(api_token(Role.CUSTOMER, "alice"))
        assert [s.saga_id for s in (await alice.ListSagas(pb.ListSagasRequest())).sagas] == [
            done.saga_id
        ]
        own = await alice.ListSagas(pb.ListSagasRequest(filter=since))
        assert list(own.sagas) == []
        error = await refused(alice.CountSagas(pb.CountSagasRequest()))
        assert error.code == grpc.StatusCode.PERMISSION_DENIED
        definitions = await alice.ListDefinitions(pb.ListDefinitionsRequest())
        place = next(d for d in definitions.definitions if d.name == "place_order")
        assert place.mode == participant_pb2.SAGA_MODE_ORCHESTRATION
        assert place.data_type == "sagawire.v1.OrderSagaData"
        steps = {s.name: s for s in place.steps}
        assert place.steps[0].name == "create_order"
        assert set(steps["schedule_shipment"].after) == {"reserve_stock", "charge_payment"}
        assert steps["schedule_shipment"].pivot and not steps["reserve_stock"].pivot
        assert steps["charge_payment"].compensation == "refund"
        assert steps["approve_order"].forward_only and steps["approve_order"].compensation == ""
        assert not steps["create_order"].forward_only


async def test_a_bad_filter_is_invalid_argument_naming_its_field(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        cases = {
            "filter.mode": pb.SagaFilter(mode=7),  # type: ignore[arg-type]
            "filter.saga": pb.SagaFilter(saga="x" * 200),
            "filter.created_after": pb.SagaFilter(
                created_after=timestamp_pb2.Timestamp(seconds=2**40)
            ),
        }
        for field, bad in cases.items():
            for call in (
                stack.api.ListSagas(pb.ListSagasRequest(filter=bad)),
                stack.api.CountSagas(pb.CountSagasRequest(filter=bad)),
            ):
                error = await refused(call)
                assert error.code == grpc.StatusCode.INVALID_ARGUMENT
                assert error.field == field, error
        # An empty range is no error, only empty.
        start = datetime.now(UTC)
        empty = pb.SagaFilter(
            created_after=stamp(start), created_before=stamp(start - timedelta(hours=1))
        )
        assert (await stack.api.CountSagas(pb.CountSagasRequest(filter=empty))).total == 0

"""The order service: orders created, approved or cancelled by sagas, and returned."""

from services.order import participant, queries, store
from services.runtime import ServiceSpec

SPEC = ServiceSpec(
    name="order",
    schema=store.SCHEMA,
    actions=participant.ACTIONS,
    load_seed=store.load_seed,
    query_service_name="sagawire.v1.Order",
    register_queries=queries.register,
    migrate=store.migrate,
)

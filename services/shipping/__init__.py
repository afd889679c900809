"""The shipping service: shipments scheduled and cancelled by sagas."""

from services.runtime import ServiceSpec
from services.shipping import participant, queries, store

SPEC = ServiceSpec(
    name="shipping",
    schema=store.SCHEMA,
    actions=participant.ACTIONS,
    load_seed=store.load_seed,
    query_service_name="sagawire.v1.Shipping",
    register_queries=queries.register,
)

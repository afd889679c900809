"""The payment service: customer balances, charged and refunded by sagas."""

from services.payment import participant, queries, store
from services.runtime import ServiceSpec

SPEC = ServiceSpec(
    name="payment",
    schema=store.SCHEMA,
    actions=participant.ACTIONS,
    load_seed=store.load_seed,
    query_service_name="sagawire.v1.Payment",
    register_queries=queries.register,
)

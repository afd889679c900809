"""The inventory service: stock per SKU, reserved and released by sagas."""

from services.inventory import participant, queries, store
from services.runtime import ServiceSpec

SPEC = ServiceSpec(
    name="inventory",
    schema=store.SCHEMA,
    actions=participant.ACTIONS,
    load_seed=store.load_seed,
    query_service_name="sagawire.v1.Inventory",
    register_queries=queries.register,
)

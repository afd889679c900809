"""Request limits, defined once: the coordinator's API, the participants' edge and the
services' read APIs refuse what exceeds them (INVALID_ARGUMENT naming the field)."""

from __future__ import annotations

MAX_ID_LENGTH = 128  # saga ids, idempotency keys, customer, order, SKU ids
MAX_ITEMS = 100  # line items of one order
MAX_QUANTITY = 10_000  # units of one line item
MAX_DESTINATION_LENGTH = 200
MAX_AMOUNT_MINOR = 10**15  # minor units: far above any real order, far below int64
MAX_PAYLOAD_BYTES = 64 * 1024  # a participant step's packed saga data
MAX_FINISHED_PER_CALL = 1_000  # saga ids in one "these sagas finished" call
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Longer than any page token a listing issues (a key of a few ids and a timestamp).
MAX_PAGE_TOKEN_LENGTH = 1_024

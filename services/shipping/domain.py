"""Shipping rules: schedule a shipment with a tracking number, or refuse the destination."""

from __future__ import annotations

import secrets
from collections.abc import Collection

from common.errors import BusinessRejection


def check_destination(destination: str, unserviceable: Collection[str]) -> None:
    """Raises BusinessRejection(UNSERVICEABLE_DESTINATION) for a place we do not ship to."""
    if destination.strip().casefold() in {d.casefold() for d in unserviceable}:
        raise BusinessRejection(
            "UNSERVICEABLE_DESTINATION",
            f"we do not ship to {destination}",
            destination=destination,
        )


def new_tracking_number() -> str:
    """A carrier-style tracking number: SW + 12 upper-case hex digits."""
    return "SW" + secrets.token_hex(6).upper()

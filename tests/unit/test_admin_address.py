"""Where a service's Admin API listens and where clients look for it: a port of its own,
the service's + the offset unless told, on loopback unless told."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.config import ADMIN_PORT_OFFSET, ServiceSettings, admin_addresses


def test_the_admin_port_is_the_services_plus_the_offset_unless_told() -> None:
    assert ServiceSettings(port=50052).admin_listen_port == 50052 + ADMIN_PORT_OFFSET
    assert ServiceSettings(port=50052, admin_port=7000).admin_listen_port == 7000
    # A service on a port the OS picks gets an Admin port the OS picks.
    assert ServiceSettings(port=0).admin_listen_port == 0
    assert ServiceSettings().admin_host == "127.0.0.1"


def test_bad_admin_settings_are_refused_by_name() -> None:
    with pytest.raises(ValidationError, match="admin_port"):
        ServiceSettings(admin_port=70_000)
    with pytest.raises(ValidationError, match="admin_host"):
        ServiceSettings(admin_host="not a host!")


def test_clients_find_every_replicas_admin_api() -> None:
    assert admin_addresses("127.0.0.1:50052") == ["127.0.0.1:50062"]
    assert admin_addresses("ipv4:127.0.0.1:50052,127.0.0.1:50152") == [
        "127.0.0.1:50062",
        "127.0.0.1:50162",
    ]
    assert admin_addresses("[::1]:50052") == ["[::1]:50062"]

"""The limits' arithmetic and option names; the caps themselves run in
tests/integration/test_stream_limits.py against real servers."""

from __future__ import annotations

from common.config import ServerSettings
from common.limits import concurrent_rpcs, connection_options


def test_streams_get_slots_of_their_own_beside_the_unary_calls() -> None:
    settings = ServerSettings(max_concurrent_rpcs=20, max_streams=50)
    assert concurrent_rpcs(settings) == 70


def test_connection_options_are_grpc_core_names_in_milliseconds() -> None:
    settings = ServerSettings(
        max_connections=7,
        connection_idle_seconds=1.5,
        connection_age_seconds=60,
        connection_age_grace_seconds=0,
    )
    options = dict(connection_options(settings))
    assert options["grpc.max_allowed_incoming_connections"] == 7
    assert options["grpc.max_connection_idle_ms"] == 1_500
    assert options["grpc.max_connection_age_ms"] == 60_000
    assert options["grpc.max_connection_age_grace_ms"] == 0
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000


def test_the_defaults_fit_grpc_int_options() -> None:
    settings = ServerSettings(
        connection_idle_seconds=2_000_000,
        connection_age_seconds=2_000_000,
        connection_age_grace_seconds=2_000_000,
    )
    assert all(value < 2**31 for _, value in connection_options(settings))

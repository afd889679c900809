"""SAGAWIRE_EVENTS and its companions: what selects NATS, what is refused at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.config import EventSettings, ServiceSettings
from common.event_transport import GrpcEvents, event_transport
from common.nats_events import NatsEvents
from common.tls import Identity
from coordinator.settings import CoordinatorSettings


@pytest.mark.parametrize("value", ["", "grpc"])
def test_grpc_streams_are_the_default(value: str) -> None:
    settings = EventSettings(events=value)
    assert settings.events == "grpc" and not settings.events_on_nats
    assert isinstance(event_transport(settings, Identity.from_env("order")), GrpcEvents)


@pytest.mark.parametrize(
    "value", ["nats://127.0.0.1:4222", "tls://nats.example:4222", "nats://a:1,nats://b:2"]
)
def test_a_nats_url_selects_nats(value: str) -> None:
    settings = EventSettings(events=value)
    assert settings.events_on_nats
    transport = event_transport(settings, Identity.from_env("order"))
    assert isinstance(transport, NatsEvents)
    assert transport.servers == [u.strip() for u in value.split(",")]
    assert transport.stream == "sagawire"


@pytest.mark.parametrize("value", ["http://127.0.0.1:4222", "nats:/x", "kafka", "nats://"])
def test_anything_else_is_refused_naming_the_choices(value: str) -> None:
    with pytest.raises(ValidationError, match="grpc or nats://"):
        EventSettings(events=value)


@pytest.mark.parametrize("prefix", ["", "a.b", "a b", "x" * 33, "a>"])
def test_the_prefix_is_one_subject_token_and_a_stream_name(prefix: str) -> None:
    with pytest.raises(ValidationError):
        EventSettings(events_prefix=prefix)


def test_every_process_reads_the_same_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGAWIRE_EVENTS", "nats://127.0.0.1:4222")
    monkeypatch.setenv("SAGAWIRE_EVENTS_PREFIX", "stack_a")
    monkeypatch.setenv("SAGAWIRE_EVENTS_MAX_AGE", "2d")
    for settings in (ServiceSettings(), CoordinatorSettings()):
        assert settings.events_on_nats
        assert settings.events_prefix == "stack_a"
        assert settings.events_max_age == 2 * 86_400

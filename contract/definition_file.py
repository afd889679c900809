"""The saga definition file's shape, as pydantic models: which keys, of which types,
in which ranges. contract/definitions.py then checks what they mean together (the
step graph, the participants' catalogue, the events).

Every shape mistake of a file is reported at once, one ``"where: what"`` line each,
``where`` a path into the file (``sagas.place_order.steps[2].deadline``).

Durations are ``"250ms"``, ``"2s"``, ``"1.5m"``, ``"1h"`` or a bare number of seconds.
A retry policy's fields left out inherit from the level above (step <- saga <- the
defaults of :class:`~common.policy.RetryPolicy`), so they are optional here.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Annotated, Any

from google.protobuf import descriptor_pool
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from contract.modes import SagaMode

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


def parse_duration(value: object) -> float:
    """Seconds from ``"250ms"``, ``"2s"``, ``"1.5m"``, ``"1h"`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"bad duration {value!r} (use e.g. 250ms, 2s, 1.5m)")
    if seconds < 0 or seconds > 86_400:
        raise ValueError(f"bad duration {value!r}: must be between 0 and 24h")
    return seconds


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"bad duration {value!r}: must be more than zero")
    return seconds


def _attempts(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ValueError("must be a whole number from 1 to 1000")
    return value


def _multiplier(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    if not 1 <= value <= 10:
        raise ValueError("must be between 1 and 10")
    return float(value)


def _step_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"{value!r} is not a lower_snake_case step name")
    return value


def _event_type(value: object) -> str:
    if not isinstance(value, str) or not _EVENT_TYPE.match(value):
        raise ValueError(f"{value!r} is not an event type like a.b.c")
    return value


def _mode(value: object) -> SagaMode:
    try:
        return SagaMode(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not orchestration or choreography") from None


def _message_type(value: object) -> str:
    try:
        descriptor_pool.Default().FindMessageTypeByName(str(value))
    except KeyError:
        raise ValueError(f"unknown protobuf message type {value!r}") from None
    return str(value)


def _step_names(value: object) -> object:
    """``after: x`` is ``after: [x]``."""
    return [value] if isinstance(value, str) else value


def _strict_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(_positive_duration)]
EventType = Annotated[str, BeforeValidator(_event_type)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryFields(_Strict):
    """A retry policy as written; a field left out inherits from the level above."""

    max_attempts: Annotated[int, BeforeValidator(_attempts)] | None = None
    initial_backoff: Duration | None = None
    max_backoff: Duration | None = None
    multiplier: Annotated[float, BeforeValidator(_multiplier)] | None = None
    jitter: Duration | None = None
    retry_for: Duration | None = None

    @field_validator("max_backoff")
    @classmethod
    def _not_below_initial(cls, value: float | None, info: ValidationInfo) -> float | None:
        initial = info.data.get("initial_backoff")
        if value is not None and initial is not None and value < initial:
            raise ValueError("must not be less than initial_backoff")
        return value


class EventFields(_Strict):
    """The event types an action publishes, by what they report."""

    succeeded: EventType | None = None
    rejected: EventType | None = None
    compensated: EventType | None = None


class ActionFields(_Strict):
    """A participant's action: what undoes it (none: it cannot be undone), its events."""

    compensation: str | None = None
    events: EventFields = EventFields()


class StepFields(_Strict):
    name: Annotated[str, BeforeValidator(_step_name)]
    participant: str
    action: str
    compensation: str | None = None
    after: Annotated[tuple[str, ...], BeforeValidator(_step_names)] = ()
    deadline: PositiveDuration | None = None
    retry: RetryFields = RetryFields()
    compensation_retry: RetryFields = RetryFields()
    pivot: Annotated[bool, BeforeValidator(_strict_bool)] = False


class SagaFields(_Strict):
    mode: Annotated[SagaMode, BeforeValidator(_mode)] = SagaMode.ORCHESTRATION
    data: Annotated[str, AfterValidator(_message_type)] = "sagawire.v1.OrderSagaData"
    reason_field: str = ""
    deadline: PositiveDuration = 30.0
    step_deadline: PositiveDuration = 2.0
    retry: RetryFields = RetryFields()
    compensation_retry: RetryFields = RetryFields()
    steps: Annotated[list[StepFields], Field(min_length=1)]


class FileFields(_Strict):
    """The whole file: the participants' catalogue and the sagas."""

    participants: Annotated[dict[str, dict[str, ActionFields | None]], Field(min_length=1)]
    sagas: Annotated[dict[str, SagaFields], Field(min_length=1)]


def read_file_fields(raw: dict[Any, Any]) -> tuple[FileFields | None, list[str]]:
    """The file's fields, or every shape problem found."""
    try:
        return FileFields.model_validate(raw), []
    except ValidationError as error:
        return None, problems_of(error)


# Pydantic's wording for the mistakes the validators above do not word themselves.
_MESSAGES = {
    "missing": "is required",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "tuple_type": "must be a list of step names",
    "too_short": "must not be empty",
    "string_type": "must be text",
}


def problems_of(error: ValidationError) -> list[str]:
    """``"where: what"`` lines; unknown keys of one mapping are named together."""
    problems: list[str] = []
    unknown: defaultdict[str, list[str]] = defaultdict(list)
    for detail in error.errors(include_url=False):
        where = path(detail["loc"])
        if detail["type"] == "extra_forbidden":
            parent, _, key = where.rpartition(".")
            if where not in unknown.get(parent, ()):
                unknown[parent].append(key)
            continue
        message = _MESSAGES.get(detail["type"], detail["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    for parent, keys in unknown.items():
        listed = ", ".join(sorted(keys))
        problems.append(
            f"{parent}: unknown keys: {listed}" if parent else f"unknown keys: {listed}"
        )
    return problems


def path(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as a path into the file: ``('sagas', 'place_order', 'steps',
    2, 'deadline')`` is ``sagas.place_order.steps[2].deadline``."""
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    return where

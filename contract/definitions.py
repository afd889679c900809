"""Saga definitions: sagas as data, loaded from a YAML file and validated.

A definition lists its steps (participant, action, compensation, per-attempt
deadline, retry policy) and their ``after:`` dependencies, so independent steps
run in parallel. The participants' catalogue says what each action publishes
(:class:`ActionEvents`): on success, on a business rejection, when compensated.

The one definition drives both modes: :mod:`coordinator.engine.runner` interprets it in
orchestration; in choreography the services build their reactions from it
(services/choreography.py) and the observer maps their events back onto its steps
(coordinator/choreography/observation.py). The services load the same file.

Loading fails with every problem found, each naming where it is: unknown
participants or actions, unknown or cyclic dependencies, a step with no
compensation that other steps follow, a misplaced pivot, bad durations, an event
a step needs that its action does not declare, an event type declared twice.

Steps split in two phases. *Compensable* steps run first, under the saga's
deadline; if one of them fails, the ones that may have taken effect are undone.
*Forward-only* steps (those after the pivot, or a final step with no
compensation) run once every compensable step succeeded and are retried until
they succeed: forward recovery.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import descriptor, descriptor_pool, message_factory
from google.protobuf.message import Message

from common.config import DEFINITIONS_FILE
from common.policy import RetryPolicy
from contract import yaml_fields as fields
from contract.dag import ancestors, find_cycle, topological

# Registers the saga data types with the default descriptor pool.
from protos.sagawire.v1 import order_saga_pb2  # noqa: F401

DEFAULT_FILE = DEFINITIONS_FILE
# The saga a participant request or an event means when it names none (from before
# there were several).
DEFAULT_SAGA = "place_order"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_ACTION_KEYS = {"compensation", "events"}
_SAGA_KEYS = {
    "mode", "data", "reason_field", "deadline", "step_deadline", "retry", "compensation_retry",
    "steps",
}  # fmt: skip
_STEP_KEYS = {
    "name", "participant", "action", "compensation", "after", "deadline", "retry",
    "compensation_retry", "pivot",
}  # fmt: skip


class SagaMode(StrEnum):
    ORCHESTRATION = "orchestration"
    CHOREOGRAPHY = "choreography"


class EventKind(StrEnum):
    """What an action's event reports about its step."""

    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    COMPENSATED = "compensated"


@dataclass(frozen=True)
class ActionEvents:
    """The event types an action publishes (None: it publishes none of that kind)."""

    succeeded: str | None = None
    rejected: str | None = None
    compensated: str | None = None

    def of(self, kind: EventKind) -> str | None:
        """The event type of that kind."""
        event_type: str | None = getattr(self, kind.value)
        return event_type

    def kind_of(self, event_type: str) -> EventKind | None:
        """What an event of this type reports (None: not one of these)."""
        return next((k for k in EventKind if self.of(k) == event_type), None)


class DefinitionError(ValueError):
    """The definition file is wrong; ``problems`` lists each mistake with its location."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid saga definitions in {source}:\n{lines}")


@dataclass(frozen=True)
class Step:
    """One step: call ``participant.action``; undo it with ``compensation``."""

    name: str
    participant: str
    action: str
    compensation: str | None
    after: tuple[str, ...]
    retry: RetryPolicy
    compensation_retry: RetryPolicy
    pivot: bool = False
    # What its action publishes (the participants' catalogue).
    events: ActionEvents = ActionEvents()


@dataclass(frozen=True)
class SagaDefinition:
    """A saga: its steps in a dependency (topological) order, and its policies."""

    name: str
    mode: SagaMode
    data_type: str
    reason_field: str
    deadline: float
    steps: tuple[Step, ...]
    pivot: str | None
    forward_only: frozenset[str]
    dependents: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def descendants(self, name: str) -> frozenset[str]:
        """Every step that runs after ``name``, directly or not."""
        found: set[str] = set()
        stack = list(self.dependents.get(name, ()))
        while stack:
            step = stack.pop()
            if step not in found:
                found.add(step)
                stack.extend(self.dependents.get(step, ()))
        return frozenset(found)

    @property
    def compensable(self) -> tuple[Step, ...]:
        """The steps of the first phase (undone if the saga fails), in order."""
        return tuple(s for s in self.steps if s.name not in self.forward_only)

    @property
    def roots(self) -> tuple[Step, ...]:
        """The steps that wait for no other step, whatever the mode."""
        return tuple(s for s in self.steps if not s.after)

    @property
    def first_steps(self) -> tuple[Step, ...]:
        """The steps a new saga starts with, at once: its roots (in orchestration, those
        of the compensable phase, which runs first)."""
        if self.mode is SagaMode.CHOREOGRAPHY:
            return self.roots
        return tuple(s for s in self.roots if s.name not in self.forward_only)

    @property
    def forward(self) -> tuple[Step, ...]:
        """The forward-only steps (after the pivot), in order."""
        return tuple(s for s in self.steps if s.name in self.forward_only)

    def new_data(self) -> Message:
        """An empty message of the saga's data type."""
        return message_class(self.data_type)()


@dataclass(frozen=True)
class Definitions:
    """Every saga definition of a file, and the participants' catalogue of actions."""

    # participant -> action -> its compensation (None: cannot be undone)
    participants: Mapping[str, Mapping[str, str | None]]
    sagas: Mapping[str, SagaDefinition]
    # participant -> action -> the events it publishes
    events: Mapping[str, Mapping[str, ActionEvents]] = field(default_factory=dict)

    def get(self, name: str) -> SagaDefinition | None:
        return self.sagas.get(name)


def message_class(full_name: str) -> type[Message]:
    """The generated class of a protobuf message type, e.g. ``sagawire.v1.OrderSagaData``."""
    desc = descriptor_pool.Default().FindMessageTypeByName(full_name)
    cls: type[Message] = message_factory.GetMessageClass(desc)
    return cls


def load_definitions(path: Path = DEFAULT_FILE, mode: str = "") -> Definitions:
    """Read and validate a definition file; ``mode`` (if set) overrides every saga's mode.

    Raises:
        DefinitionError: listing every problem found.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise DefinitionError(str(path), [f"cannot read the file: {error.strerror}"]) from None
    except yaml.YAMLError as error:
        raise DefinitionError(str(path), [f"not valid YAML: {error}"]) from None
    return parse_definitions(raw, str(path), mode)


def parse_definitions(raw: object, source: str = "<memory>", mode: str = "") -> Definitions:
    """Validate already-parsed YAML (see :func:`load_definitions`)."""
    problems: list[str] = []
    if mode and mode not in SagaMode.__members__.values():
        problems.append(f"mode override {mode!r}: must be orchestration or choreography")
    if not isinstance(raw, dict):
        raise DefinitionError(source, ["the file must be a mapping with participants and sagas"])
    unknown = set(raw) - {"participants", "sagas"}
    if unknown:
        problems.append(f"unknown top-level keys: {', '.join(sorted(map(str, unknown)))}")
    catalogue, events = _catalogue(raw.get("participants"), problems)
    sagas_raw = raw.get("sagas")
    sagas: dict[str, SagaDefinition] = {}
    if not isinstance(sagas_raw, dict) or not sagas_raw:
        problems.append("sagas: must map saga names to definitions")
    else:
        for name, body in sagas_raw.items():
            parser = _Saga(f"sagas.{name}", catalogue, events, problems)
            saga = parser.parse(str(name), body, mode)
            if saga is not None:
                sagas[str(name)] = saga
    if problems:
        raise DefinitionError(source, problems)
    return Definitions(participants=catalogue, sagas=sagas, events=events)


_Catalogue = dict[str, dict[str, str | None]]
_Events = dict[str, dict[str, ActionEvents]]


def _catalogue(raw: object, problems: list[str]) -> tuple[_Catalogue, _Events]:
    """Each participant's actions: their compensation and the events they publish."""
    if not isinstance(raw, dict) or not raw:
        problems.append("participants: must map each participant to its actions")
        return {}, {}
    catalogue: _Catalogue = {}
    events: _Events = {}
    declared: dict[str, str] = {}  # event type -> where, to find one declared twice
    for name, actions in raw.items():
        if not isinstance(actions, dict) or not actions:
            problems.append(f"participants.{name}: must map actions to what they offer")
            continue
        catalogue[str(name)], events[str(name)] = {}, {}
        for action, body in actions.items():
            where = f"participants.{name}.{action}"
            if body is None:
                body = {}
            if not isinstance(body, dict):
                fields.add(problems, where, "must be a mapping of compensation and events")
                continue
            fields.unknown_keys(problems, where, body, _ACTION_KEYS)
            compensation = body.get("compensation")
            catalogue[str(name)][str(action)] = str(compensation) if compensation else None
            events[str(name)][str(action)] = _action_events(
                f"{where}.events", body.get("events"), declared, problems
            )
    return catalogue, events


def _action_events(
    where: str, raw: object, declared: dict[str, str], problems: list[str]
) -> ActionEvents:
    if raw is None:
        return ActionEvents()
    if not isinstance(raw, dict):
        fields.add(problems, where, "must map succeeded, rejected, compensated to event types")
        return ActionEvents()
    fields.unknown_keys(problems, where, raw, {k.value for k in EventKind})
    found: dict[str, str] = {}
    for kind in EventKind:
        value = raw.get(kind.value)
        if value is None:
            continue
        if not isinstance(value, str) or not _EVENT_TYPE.match(value):
            fields.add(problems, f"{where}.{kind}", f"{value!r} is not an event type like a.b.c")
            continue
        if value in declared:
            fields.add(problems, f"{where}.{kind}", f"{value!r} is already {declared[value]}")
            continue
        declared[value] = f"{where}.{kind}"
        found[kind.value] = value
    return ActionEvents(**found)


class _Saga:
    """Parses and checks one saga, appending problems instead of stopping at the first."""

    def __init__(
        self,
        where: str,
        catalogue: Mapping[str, Mapping[str, str | None]],
        events: Mapping[str, Mapping[str, ActionEvents]],
        problems: list[str],
    ) -> None:
        self.where = where
        self.catalogue = catalogue
        self.events = events
        self.problems = problems
        self._first_problem = len(problems)

    @property
    def failed(self) -> bool:
        return len(self.problems) > self._first_problem

    def problem(self, where: str, message: str) -> None:
        fields.add(self.problems, where, message)

    def parse(self, name: str, body: object, mode_override: str) -> SagaDefinition | None:
        where = self.where
        if not _NAME.match(name):
            self.problem(where, "saga names are lower_snake_case")
        if not isinstance(body, dict):
            self.problem(where, "must be a mapping")
            return None
        fields.unknown_keys(self.problems, where, body, _SAGA_KEYS)
        mode = self._mode(mode_override or body.get("mode", SagaMode.ORCHESTRATION.value))
        data_type, reason_field = self._data(body)
        deadline = fields.duration(
            self.problems, f"{where}.deadline", body.get("deadline", "30s"), positive=True
        )
        step_deadline = fields.duration(
            self.problems, f"{where}.step_deadline", body.get("step_deadline", "2s"), positive=True
        )
        retry = fields.retry(self.problems, f"{where}.retry", body.get("retry"), RetryPolicy())
        comp_default = RetryPolicy(max_attempts=10, initial_backoff=0.2, max_backoff=5.0)
        comp_retry = fields.retry(
            self.problems,
            f"{where}.compensation_retry",
            body.get("compensation_retry"),
            comp_default,
        )
        steps_raw = body.get("steps")
        if not isinstance(steps_raw, list) or not steps_raw:
            self.problem(f"{where}.steps", "must be a non-empty list")
            return None
        steps = [
            self._step(f"{where}.steps[{i}]", raw, step_deadline, retry, comp_retry)
            for i, raw in enumerate(steps_raw)
        ]
        if any(s is None for s in steps):
            return None
        return self._graph(name, mode, data_type, reason_field, deadline, [s for s in steps if s])

    def _events(self, steps: Sequence[Step], forward_only: set[str]) -> None:
        """Each step's action must publish what choreography needs of it: its success
        (the next steps react to it), its rejection unless it comes after the pivot (the
        saga turns back on it), its compensation if it has one (the steps before it wait
        for it to be undone)."""
        for step in steps:
            needed = [EventKind.SUCCEEDED]
            if step.name not in forward_only:
                needed.append(EventKind.REJECTED)
            if step.compensation is not None:
                needed.append(EventKind.COMPENSATED)
            missing = [k.value for k in needed if step.events.of(k) is None]
            if missing:
                self.problem(
                    f"{self.where}.{step.name}",
                    f"{step.participant}.{step.action} declares no {' or '.join(missing)}"
                    " event (participants.<name>.<action>.events)",
                )

    def _mode(self, value: object) -> SagaMode:
        try:
            return SagaMode(str(value))
        except ValueError:
            self.problem(f"{self.where}.mode", f"{value!r} is not orchestration or choreography")
            return SagaMode.ORCHESTRATION

    def _data(self, body: Mapping[str, Any]) -> tuple[str, str]:
        data_type = str(body.get("data", "sagawire.v1.OrderSagaData"))
        reason_field = str(body.get("reason_field", ""))
        try:
            desc = descriptor_pool.Default().FindMessageTypeByName(data_type)
        except KeyError:
            self.problem(f"{self.where}.data", f"unknown protobuf message type {data_type!r}")
            return data_type, reason_field
        if reason_field:
            fld = desc.fields_by_name.get(reason_field)
            if fld is None or fld.type != descriptor.FieldDescriptor.TYPE_STRING:
                self.problem(
                    f"{self.where}.reason_field",
                    f"{data_type} has no string field {reason_field!r}",
                )
        return data_type, reason_field

    def _step(
        self,
        where: str,
        raw: object,
        step_deadline: float,
        retry: RetryPolicy,
        comp_retry: RetryPolicy,
    ) -> Step | None:
        if not isinstance(raw, dict):
            self.problem(where, "must be a mapping")
            return None
        fields.unknown_keys(self.problems, where, raw, _STEP_KEYS)
        name = str(raw.get("name", ""))
        if not _NAME.match(name):
            self.problem(f"{where}.name", f"{name!r} is not a lower_snake_case step name")
        participant = str(raw.get("participant", ""))
        action = str(raw.get("action", ""))
        compensation = raw.get("compensation")
        compensation = str(compensation) if compensation is not None else None
        actions = self.catalogue.get(participant)
        if actions is None:
            known = ", ".join(sorted(self.catalogue)) or "none"
            self.problem(
                f"{where}.participant", f"unknown participant {participant!r} (known: {known})"
            )
        elif action not in actions:
            known = ", ".join(sorted(actions))
            self.problem(
                f"{where}.action", f"{participant} has no action {action!r} (known: {known})"
            )
        elif compensation is not None and actions[action] != compensation:
            undo = actions[action]
            expected = f"its compensation is {undo!r}" if undo else "it has no compensation"
            self.problem(
                f"{where}.compensation",
                f"{compensation!r} does not undo {participant}.{action} ({expected})",
            )
        after = raw.get("after", [])
        if isinstance(after, str):
            after = [after]
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            self.problem(f"{where}.after", "must be a list of step names")
            after = []
        pivot = raw.get("pivot", False)
        if not isinstance(pivot, bool):
            self.problem(f"{where}.pivot", "must be true or false")
            pivot = False
        deadline = fields.duration(
            self.problems, f"{where}.deadline", raw.get("deadline", step_deadline), True
        )
        step_retry = fields.retry(self.problems, f"{where}.retry", raw.get("retry"), retry)
        step_comp = fields.retry(
            self.problems, f"{where}.compensation_retry", raw.get("compensation_retry"), comp_retry
        )
        return Step(
            name=name,
            participant=participant,
            action=action,
            compensation=compensation,
            after=tuple(after),
            retry=replace(step_retry, attempt_timeout=deadline),
            compensation_retry=replace(step_comp, attempt_timeout=deadline),
            pivot=pivot,
            events=self.events.get(participant, {}).get(action, ActionEvents()),
        )

    def _graph(
        self,
        name: str,
        mode: SagaMode,
        data_type: str,
        reason_field: str,
        deadline: float,
        steps: list[Step],
    ) -> SagaDefinition | None:
        where = self.where
        by_name: dict[str, Step] = {}
        for step in steps:
            if step.name in by_name:
                self.problem(f"{where}.steps", f"step name {step.name!r} is used twice")
            by_name[step.name] = step
        graph = {s.name: s.after for s in steps}
        for step in steps:
            for dep in step.after:
                if dep == step.name:
                    self.problem(f"{where}.{step.name}.after", "a step cannot come after itself")
                elif dep not in by_name:
                    self.problem(f"{where}.{step.name}.after", f"unknown step {dep!r}")
        if self.failed:
            return None
        cycle = find_cycle(graph)
        if cycle:
            self.problem(where, f"dependency cycle: {' -> '.join(reversed(cycle))}")
            return None
        order = topological(graph)
        before = {n: ancestors(graph, n) for n in order}
        pivots = [s.name for s in steps if s.pivot]
        forward_only: set[str] = set()
        if len(pivots) > 1:
            self.problem(where, f"only one step can be the pivot, not {', '.join(pivots)}")
            return None
        pivot = pivots[0] if pivots else None
        if pivot is not None:
            for other in order:
                if other == pivot or other in before[pivot]:
                    continue
                if pivot not in before[other]:
                    self.problem(
                        f"{where}.{other}",
                        f"must run before or after the pivot {pivot!r}"
                        " (put one in the other's after: list)",
                    )
                else:
                    forward_only.add(other)
            if by_name[pivot].compensation is None:
                self.problem(
                    f"{where}.{pivot}",
                    "the pivot needs a compensation: its outcome is unknown if its retries run out",
                )
        for step in (by_name[n] for n in order):
            if step.compensation is not None or step.name in forward_only or step.name == pivot:
                continue
            followers = [n for n in order if n != step.name and n not in before[step.name]]
            if pivot is None and not followers:
                forward_only.add(step.name)  # the last step: retried forward, never undone
                continue
            self.problem(
                f"{where}.{step.name}",
                f"has no compensation but is followed by {', '.join(map(repr, followers))}"
                " (only steps after the pivot may lack one)",
            )
        self._events(steps, forward_only)
        if self.failed:
            return None
        dependents = {n: tuple(m for m in order if n in graph[m]) for n in order}
        return SagaDefinition(
            name=name,
            mode=mode,
            data_type=data_type,
            reason_field=reason_field,
            deadline=deadline,
            steps=tuple(by_name[n] for n in order),
            pivot=pivot,
            forward_only=frozenset(forward_only),
            dependents=dependents,
        )

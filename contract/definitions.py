"""Saga definitions: sagas as data, loaded from a YAML file and validated.

A definition lists its steps (participant, action, compensation, per-attempt
deadline, retry policy) and their ``after:`` dependencies, so independent steps
run in parallel. The participants' catalogue says what each action publishes
(:class:`ActionEvents`): on success, on a business rejection, when compensated.

The one definition drives both modes: :mod:`coordinator.engine.runner` interprets it in
orchestration; in choreography the services build their reactions from it
(services/choreography.py) and the observer maps their events back onto its steps
(coordinator/choreography/observation.py). The services load the same file.

Loading fails with every problem found, each naming where it is. The file's shape
(keys, types, durations, retry policies) is pydantic's to check
(contract/definition_file.py); its meaning is checked here: unknown participants or
actions, unknown or cyclic dependencies, a step with no compensation that other
steps follow, a misplaced pivot, an event a step needs that its action does not
declare, an event type declared twice.

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

import yaml
from google.protobuf import descriptor, descriptor_pool, message_factory
from google.protobuf.message import Message

from common.config import DEFINITIONS_FILE
from common.policy import RetryPolicy
from contract.dag import ancestors, find_cycle, topological
from contract.definition_file import (
    ActionFields,
    FileFields,
    RetryFields,
    SagaFields,
    StepFields,
    read_file_fields,
)
from contract.modes import SagaMode as SagaMode  # re-exported: part of a definition

# Registers the saga data types with the default descriptor pool.
from protos.sagawire.v1 import order_saga_pb2  # noqa: F401

DEFAULT_FILE = DEFINITIONS_FILE
# The saga a participant request or an event means when it names none (from before
# there were several).
DEFAULT_SAGA = "place_order"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# What a compensation's retries default to: more patient than a step's.
_COMPENSATION_RETRY = RetryPolicy(max_attempts=10, initial_backoff=0.2, max_backoff=5.0)


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
    """Validate already-parsed YAML (see :func:`load_definitions`): its shape first
    (contract/definition_file.py), then what it means."""
    if not isinstance(raw, dict):
        raise DefinitionError(source, ["the file must be a mapping with participants and sagas"])
    problems: list[str] = []
    if mode and mode not in SagaMode.__members__.values():
        problems.append(f"mode override {mode!r}: must be orchestration or choreography")
    problems += _events_declared_twice(raw.get("participants"))
    fields, shape_problems = read_file_fields(raw)
    problems += shape_problems
    if fields is None:
        raise DefinitionError(source, problems)
    catalogue, events = _catalogue(fields)
    sagas: dict[str, SagaDefinition] = {}
    for name, body in fields.sagas.items():
        checker = _Saga(f"sagas.{name}", catalogue, events, problems)
        saga = checker.check(name, body, SagaMode(mode) if mode else body.mode)
        if saga is not None:
            sagas[name] = saga
    if problems:
        raise DefinitionError(source, problems)
    return Definitions(participants=catalogue, sagas=sagas, events=events)


_Catalogue = dict[str, dict[str, str | None]]
_Events = dict[str, dict[str, ActionEvents]]


def _catalogue(fields: FileFields) -> tuple[_Catalogue, _Events]:
    """Each participant's actions: their compensation and the events they publish."""
    catalogue: _Catalogue = {}
    events: _Events = {}
    for name, actions in fields.participants.items():
        catalogue[name], events[name] = {}, {}
        for action, body in actions.items():
            offered = body or ActionFields()
            catalogue[name][action] = offered.compensation or None
            events[name][action] = ActionEvents(**offered.events.model_dump())
    return catalogue, events


def _events_declared_twice(participants: object) -> list[str]:
    """Every event type is declared once (read off the raw file, so this is reported
    beside any shape problem of the same actions)."""
    problems: list[str] = []
    declared: dict[str, str] = {}  # event type -> where
    for name, actions in _items(participants):
        for action, body in _items(actions):
            for kind, event_type in _items(body.get("events") if isinstance(body, dict) else None):
                if kind not in EventKind.__members__.values() or not isinstance(event_type, str):
                    continue  # a shape problem, reported as such
                where = f"participants.{name}.{action}.events.{kind}"
                if event_type in declared:
                    problems.append(f"{where}: {event_type!r} is already {declared[event_type]}")
                else:
                    declared[event_type] = where
    return problems


def _items(value: object) -> list[tuple[str, object]]:
    return [(str(k), v) for k, v in value.items()] if isinstance(value, dict) else []


def _retry(fields: RetryFields, base: RetryPolicy) -> RetryPolicy:
    """A retry policy as written, laid over the level above's."""
    given = {k: v for k, v in fields.model_dump().items() if v is not None}
    return replace(base, **given)


class _Saga:
    """Checks what one saga's steps mean together, appending problems instead of
    stopping at the first."""

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
        self.problems.append(f"{where}: {message}")

    def check(self, name: str, body: SagaFields, mode: SagaMode) -> SagaDefinition | None:
        if not _NAME.match(name):
            self.problem(self.where, "saga names are lower_snake_case")
        self._reason_field(body.data, body.reason_field)
        retry = self._policy(f"{self.where}.retry", body.retry, RetryPolicy())
        undo_retry = self._policy(
            f"{self.where}.compensation_retry", body.compensation_retry, _COMPENSATION_RETRY
        )
        steps = [
            self._step(f"{self.where}.steps[{i}]", fields, body.step_deadline, retry, undo_retry)
            for i, fields in enumerate(body.steps)
        ]
        return self._graph(name, mode, body.data, body.reason_field, body.deadline, steps)

    def _policy(self, where: str, fields: RetryFields, base: RetryPolicy) -> RetryPolicy:
        policy = _retry(fields, base)
        if policy.max_backoff < policy.initial_backoff and fields.max_backoff is not None:
            self.problem(f"{where}.max_backoff", "must not be less than initial_backoff")
        return policy

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

    def _reason_field(self, data_type: str, reason_field: str) -> None:
        if not reason_field:
            return
        desc = descriptor_pool.Default().FindMessageTypeByName(data_type)
        found = desc.fields_by_name.get(reason_field)
        if found is None or found.type != descriptor.FieldDescriptor.TYPE_STRING:
            self.problem(
                f"{self.where}.reason_field", f"{data_type} has no string field {reason_field!r}"
            )

    def _step(
        self,
        where: str,
        raw: StepFields,
        step_deadline: float,
        retry: RetryPolicy,
        compensation_retry: RetryPolicy,
    ) -> Step:
        participant, action, compensation = raw.participant, raw.action, raw.compensation
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
        deadline = raw.deadline if raw.deadline is not None else step_deadline
        step_retry = self._policy(f"{where}.retry", raw.retry, retry)
        step_compensation = self._policy(
            f"{where}.compensation_retry", raw.compensation_retry, compensation_retry
        )
        return Step(
            name=raw.name,
            participant=participant,
            action=action,
            compensation=compensation,
            after=raw.after,
            retry=replace(step_retry, attempt_timeout=deadline),
            compensation_retry=replace(step_compensation, attempt_timeout=deadline),
            pivot=raw.pivot,
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

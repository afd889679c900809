"""Typed fields of the saga definition file: durations and retry policies.

Each parser appends a problem (``"where: what is wrong"``) to a list instead of
raising, so loading reports every mistake of a file at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from common.policy import RetryPolicy

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_RETRY_KEYS = {
    "max_attempts",
    "initial_backoff",
    "max_backoff",
    "multiplier",
    "jitter",
    "retry_for",
}


def add(problems: list[str], where: str, message: str) -> None:
    problems.append(f"{where}: {message}")


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


def unknown_keys(
    problems: list[str], where: str, body: Mapping[Any, Any], allowed: set[str]
) -> None:
    unknown = set(map(str, body)) - allowed
    if unknown:
        add(problems, where, f"unknown keys: {', '.join(sorted(unknown))}")


def duration(problems: list[str], where: str, value: object, positive: bool = False) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as error:
        add(problems, where, str(error))
        return 1.0
    if positive and seconds <= 0:
        add(problems, where, f"bad duration {value!r}: must be more than zero")
        return 1.0
    return seconds


def retry(problems: list[str], where: str, raw: object, base: RetryPolicy) -> RetryPolicy:
    if raw is None:
        return base
    if not isinstance(raw, dict):
        add(problems, where, "must be a mapping")
        return base
    unknown_keys(problems, where, raw, _RETRY_KEYS)
    attempts = raw.get("max_attempts", base.max_attempts)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 1000:
        add(problems, f"{where}.max_attempts", "must be a whole number from 1 to 1000")
        attempts = base.max_attempts
    multiplier = raw.get("multiplier", base.multiplier)
    if isinstance(multiplier, bool) or not isinstance(multiplier, int | float):
        add(problems, f"{where}.multiplier", "must be a number")
        multiplier = base.multiplier
    elif not 1 <= multiplier <= 10:
        add(problems, f"{where}.multiplier", "must be between 1 and 10")
    initial = duration(
        problems, f"{where}.initial_backoff", raw.get("initial_backoff", base.initial_backoff)
    )
    maximum = duration(problems, f"{where}.max_backoff", raw.get("max_backoff", base.max_backoff))
    if maximum < initial:
        add(problems, f"{where}.max_backoff", "must not be less than initial_backoff")
    jitter = duration(problems, f"{where}.jitter", raw.get("jitter", base.jitter))
    retry_for = duration(problems, f"{where}.retry_for", raw.get("retry_for", base.retry_for))
    return RetryPolicy(
        max_attempts=attempts,
        initial_backoff=initial,
        max_backoff=maximum,
        multiplier=float(multiplier),
        jitter=jitter,
        attempt_timeout=base.attempt_timeout,
        retry_for=retry_for,
    )

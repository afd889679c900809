"""What the read verbs print: tables that fit the terminal for people, JSON for scripts.

``--output table`` (the default) draws tables that fit the terminal (:class:`FittedTable`):
free text wraps, and when the short values cannot stay whole, each row becomes a record of
``column: value`` lines; no column is ever cut off. Times are local, and every table or
stream says which zone. What is not known yet is a placeholder (:data:`UNKNOWN`).

``--output json`` prints JSON: one object for one thing (``saga show``), one object per
line for lists and streams (``saga list``, ``saga watch``, ``events tail``), so ``jq``
reads either. API messages appear in protobuf's JSON mapping, as grpcurl prints them
(field names as in the .proto, enums by name, times as RFC 3339 in UTC, money as integer
``amount_minor`` and ``currency``; a 64-bit integer is a number, a string only beyond
2^53).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from rich.console import Console, ConsoleOptions, JustifyMethod, RenderResult
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

UNKNOWN = "-"
# Width for tables when the output is not a terminal and COLUMNS does not say.
_PIPE_WIDTH = 160


class Output(StrEnum):
    """How a read verb prints what it read."""

    table = "table"
    json = "json"


OutputOption = Annotated[
    Output,
    typer.Option(
        "--output",
        "-o",
        help="table (for people) or json (for scripts: one object, or one per line for lists"
        " and streams).",
    ),
]


def console(stderr: bool = False) -> Console:
    """A console as wide as the terminal (160 columns into a pipe, unless COLUMNS says)."""
    out = Console(stderr=stderr, highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(stderr=stderr, highlight=False, width=_PIPE_WIDTH)
    return out


class FittedTable:
    """A table that fits the width it is printed in, or becomes one record per row.

    Short values (ids, names, times, numbers) stay on one line; the ``wrap`` columns (free
    text) wrap their cells. When even that is wider than the terminal, every row is printed
    as ``column: value`` lines instead: no column is ever cut off.
    """

    def __init__(
        self,
        *columns: str,
        title: str | None = None,
        wrap: tuple[str, ...] = (),
        right: tuple[str, ...] = (),
    ) -> None:
        self.columns = columns
        self.title = title
        self.wrap = frozenset(wrap)
        self.right = frozenset(right)
        self.rows: list[tuple[Text, ...]] = []

    def add_row(self, *cells: str | Text) -> None:
        self.rows.append(tuple(c if isinstance(c, Text) else Text(c) for c in cells))

    def _least_widths(self) -> list[int]:
        """Each column's narrowest: a short value and its header whole; free text at 8
        (a longer word folds), its header broken between words only."""
        widths = []
        for index, column in enumerate(self.columns):
            cells = [row[index].cell_len for row in self.rows] or [0]
            if column in self.wrap:
                longest_word = max(len(word) for word in column.split())
                widths.append(max(longest_word, min(8, max(cells))))
            else:
                widths.append(max(len(column), *cells))
        return widths

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        least = self._least_widths()
        # Each column has a space of padding on both sides and a border after it.
        if sum(least) + 3 * len(least) + 1 <= options.max_width:
            out = Table(title=self.title, title_justify="left")
            for column, width in zip(self.columns, least, strict=True):
                justify: JustifyMethod = "right" if column in self.right else "left"
                wraps = column in self.wrap
                out.add_column(
                    column, no_wrap=not wraps, overflow="fold", justify=justify, min_width=width
                )
            for row in self.rows:
                out.add_row(*row)
            lines = console.render_lines(out, options, pad=False)
            # Rich crops a table it could not fit: then its right border is gone.
            if lines and "".join(s.text for s in lines[-1]).rstrip().endswith("┘"):
                for line in lines:
                    yield from line
                    yield Segment.line()
                return
        if self.title:
            yield Text(self.title, style="italic")
        width = max(len(c) for c in self.columns)
        for number, row in enumerate(self.rows):
            if number:
                yield Text("")
            for column, cell in zip(self.columns, row, strict=True):
                yield Text(f"{column:>{width}}: ", style="bold") + cell


def table(
    *columns: str,
    title: str | None = None,
    wrap: tuple[str, ...] = (),
    right: tuple[str, ...] = (),
) -> FittedTable:
    """A :class:`FittedTable` of these columns."""
    return FittedTable(*columns, title=title, wrap=wrap, right=right)


def message_dict(message: Message) -> dict[str, Any]:
    """An API message in protobuf's JSON mapping (every field, names as in the .proto)."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


def print_json(value: Message | dict[str, Any] | list[Any]) -> None:
    """One JSON document on one line (a message in protobuf's JSON mapping)."""
    document = message_dict(value) if isinstance(value, Message) else value
    sys.stdout.write(json.dumps(document, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def when(stamp: timestamp_pb2.Timestamp) -> datetime | None:
    """A timestamp as an aware datetime in UTC; None when unset (not known yet)."""
    if not (stamp.seconds or stamp.nanos):
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def zone() -> str:
    """This machine's zone as a label: ``UTC`` or ``UTC+02:00``."""
    offset = datetime.now().astimezone().utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset else 0
    if not minutes:
        return "UTC"
    sign = "+" if minutes > 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours:02d}:{rest:02d}"


def clock(stamp: timestamp_pb2.Timestamp, with_date: bool = False) -> str:
    """Local time of day to the millisecond (``14:03:07.412``), or the placeholder; with
    ``with_date``, to the second and with the date unless it is today (``12-01 09:30:05``)."""
    moment = when(stamp)
    if moment is None:
        return UNKNOWN
    local = moment.astimezone()
    if not with_date:
        return f"{local:%H:%M:%S}.{local.microsecond // 1000:03d}"
    today = datetime.now().astimezone().date()
    if local.date() == today:
        return f"{local:%H:%M:%S}"
    return f"{local:%m-%d %H:%M:%S}" if local.year == today.year else f"{local:%Y-%m-%d %H:%M}"


def duration(start: timestamp_pb2.Timestamp, end: timestamp_pb2.Timestamp) -> str:
    """``40 ms`` / ``1.2 s`` between two stamps, or the placeholder when either is unknown."""
    begin, finish = when(start), when(end)
    if begin is None or finish is None:
        return UNKNOWN
    return seconds_text((finish - begin).total_seconds())


def seconds_text(seconds: float) -> str:
    """A duration for people: milliseconds below 10 s, then seconds."""
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"

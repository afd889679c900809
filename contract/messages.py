"""Saga data on the wire: packing it, and laying a step's result over it.

Each step returns only the fields it fills in (a total, a charge id...); the
request of the next step carries the merged data as its payload. A choreographed
step's result is the whole data its event carried, so results are laid over the
input field by field: a field a result sets replaces the input's (protobuf's
``MergeFrom`` would append repeated fields: the order's items, once per step).
"""

from __future__ import annotations

from google.protobuf import any_pb2
from google.protobuf.message import Message


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def overlay(data: Message, result: Message) -> None:
    """Set every field ``result`` sets on ``data``, replacing what was there."""
    for field, value in result.ListFields():
        if field.is_repeated:  # lists and maps
            data.ClearField(field.name)
            getattr(data, field.name).MergeFrom(value)
        elif field.message_type is not None:
            getattr(data, field.name).CopyFrom(value)
        else:
            setattr(data, field.name, value)

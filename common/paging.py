"""Pages of a list RPC: the page size, the opaque page token, and reading every page.

Every ``List*`` RPC pages the same way: ``page_size`` (0 means :data:`DEFAULT_PAGE_SIZE`,
at most :data:`MAX_PAGE_SIZE`), ``page_token`` (the previous page's ``next_page_token``),
``next_page_token`` (empty on the last page). A page is read by key, never by offset
(``WHERE key > last ORDER BY key LIMIT size + 1``), so the order is stable and a row
added or removed meanwhile shifts nothing. The token is that last key, with the name of
the listing it belongs to, base64url-encoded JSON: opaque to callers, and refused with
INVALID_ARGUMENT (``page_token``) when it is not one the listing issued.

Callers that need everything (the CLI, the bench's checks, tests) read page after page
with :func:`every_page`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from common.errors import InvalidArgument
from contract.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_PAGE_TOKEN_LENGTH

Key = tuple[str | int, ...]
_T = TypeVar("_T")
_R = TypeVar("_R")


def page_size(value: int, maximum: int = MAX_PAGE_SIZE) -> int:
    """The page size a request asks for (0: the default).

    Raises:
        InvalidArgument: below 0 or above ``maximum``.
    """
    if not 0 <= value <= maximum:
        raise InvalidArgument("page_size", f"must be from 0 to {maximum}")
    return value or min(DEFAULT_PAGE_SIZE, maximum)


def encode_token(listing: str, key: Key) -> str:
    """The token of the page that follows the row whose sort key is ``key``."""
    raw = json.dumps([listing, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_token(token: str, listing: str, kinds: Sequence[type]) -> Key | None:
    """The key a token carries (None for no token), checked against its listing and the
    types of the key's parts.

    Raises:
        InvalidArgument: not a token of ``listing``.
    """
    if not token:
        return None
    decoded = None
    if len(token) <= MAX_PAGE_TOKEN_LENGTH:
        with contextlib.suppress(ValueError, binascii.Error, RecursionError):
            decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
    if (
        not isinstance(decoded, list)
        or len(decoded) != len(kinds) + 1
        or decoded[0] != listing
        or not all(type(part) is kind for part, kind in zip(decoded[1:], kinds, strict=True))
    ):
        raise InvalidArgument("page_token", "is not a token this listing issued")
    return tuple(decoded[1:])


def cut(
    rows: Sequence[_T], size: int, listing: str, key: Callable[[_T], Key]
) -> tuple[Sequence[_T], str]:
    """A page from ``rows`` read with ``LIMIT size + 1``: the page, and the next token
    ("" when nothing follows)."""
    if len(rows) <= size:
        return rows, ""
    page = rows[:size]
    return page, encode_token(listing, key(page[-1]))


class _Paged(Protocol):
    @property
    def next_page_token(self) -> str: ...


_P = TypeVar("_P", bound=_Paged)


async def every_page(
    fetch: Callable[[str], Awaitable[_P]], items: Callable[[_P], Sequence[_R]]
) -> list[_R]:
    """Every item of a listing: ``fetch(page_token)`` page after page until the last.

    ``fetch`` builds the request with the token it is given; ``items`` picks the
    repeated field out of a reply.
    """
    found: list[_R] = []
    token = ""
    while True:
        reply = await fetch(token)
        found.extend(items(reply))
        token = reply.next_page_token
        if not token:
            return found


def every_page_sync(fetch: Callable[[str], Any], items: Callable[[Any], Sequence[_R]]) -> list[_R]:
    """:func:`every_page` for blocking stubs (the CLI's)."""
    found: list[_R] = []
    token = ""
    while True:
        reply = fetch(token)
        found.extend(items(reply))
        token = reply.next_page_token
        if not token:
            return found

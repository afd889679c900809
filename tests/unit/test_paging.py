"""Page tokens and sizes (common/paging.py): opaque to callers, checked by the listing."""

from __future__ import annotations

import base64

import pytest

from common import paging
from common.errors import InvalidArgument
from contract.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE


def test_page_tokens_are_opaque_and_checked() -> None:
    token = paging.encode_token("charges", ("2026-03-01T12:00:00+00:00", "c-1"))
    assert paging.decode_token(token, "charges", (str, str)) == (
        "2026-03-01T12:00:00+00:00",
        "c-1",
    )
    assert paging.decode_token("", "charges", (str, str)) is None
    for bad, kinds in [
        (token, (str,)),  # another shape
        (paging.encode_token("orders", ("a", "b")), (str, str)),  # another listing
        (paging.encode_token("charges", ("a", 1)), (str, str)),  # another type
        ("%%%", (str,)),
        ("bm90IGpzb24", (str,)),
        ("W" * 5_000, (str,)),  # longer than any token issued
        (base64.urlsafe_b64encode(b"[" * 700).decode(), (str,)),  # nested past the parser
    ]:
        with pytest.raises(InvalidArgument) as refused:
            paging.decode_token(bad, "charges" if bad != "%%%" else "x", kinds)
        assert refused.value.field == "page_token"
    assert paging.page_size(0) == DEFAULT_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        paging.page_size(MAX_PAGE_SIZE + 1)
    page, next_token = paging.cut([1, 2, 3], 2, "n", lambda n: (n,))
    assert list(page) == [1, 2] and paging.decode_token(next_token, "n", (int,)) == (2,)
    assert paging.cut([1, 2], 2, "n", lambda n: (n,)) == ([1, 2], "")

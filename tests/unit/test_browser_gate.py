"""Without Chromium the browser tests skip, saying how to get it; in CI they fail."""

from __future__ import annotations

import pytest

from tests.browser import conftest


def test_no_browser_skips_outside_ci_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        conftest._unavailable("no Chromium found")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run in CI"):
        conftest._unavailable("no Chromium found")


def test_the_browser_is_found_by_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # A path that is not there is passed over for the installed one, if any.
    monkeypatch.setenv("SAGAWIRE_CHROMIUM", "/nonexistent/chromium")
    assert conftest.chromium_path() != "/nonexistent/chromium"
    monkeypatch.setenv("SAGAWIRE_CHROMIUM", __file__)
    assert conftest.chromium_path() == __file__

"""Whose token each of the console's calls carries, and which requests it takes at all.

The coordinator decides what a caller may read or do from its bearer token
(coordinator/api/auth.py); the console only chooses which token to send:

1. the user's own: ``Authorization: Bearer <token>`` on the request, or the token the
   user signed in with (``POST /api/session``), kept in an HttpOnly, SameSite=Strict
   cookie. A customer's token shows that customer's sagas and nothing else; an
   operator's shows everything and may retry.
2. else, **only when the console listens on a loopback address** (127.0.0.1, ::1,
   localhost), an operator credential it holds itself: ``--token`` /
   ``SAGAWIRE_TOKEN``, or one minted with the local stack's signing key when that key
   is on this machine (as the CLI does, cli/tokens.py). Whoever reaches a loopback
   port is on this machine, where that key (or the CLI) already gives them as much.
   On any other address the console holds nothing: every user signs in with a token.
3. else none: the coordinator answers UNAUTHENTICATED and the page asks for a token.

Because a held credential acts for whoever reaches the port, two guards stand in
front of every request (:class:`Guard`): with a held credential, the ``Host`` header
must name a loopback host (a DNS-rebinding page of another site names its own), and
every request that changes something (POST, DELETE) must carry the header
``X-Sagawire-Console`` and, if it has one, an ``Origin`` of the console itself — a
form or image of another site can send neither, so no other page can retry a saga
through a user's browser.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from cli.tokens import cli_token

log = logging.getLogger(__name__)

COOKIE = "sagawire_console_token"
CSRF_HEADER = "x-sagawire-console"
# A minted token lasts 12 hours (cli/tokens.py); mint a fresh one well before.
_REMINT_SECONDS = 3600.0
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``, brackets allowed) is this machine only."""
    bare = host.strip("[]").lower()
    if bare in _LOOPBACK_NAMES or bare.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port (``[::1]:8080`` -> ``::1``)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HeldCredential:
    """The operator token a loopback console sends for users who bring none.

    A token given explicitly is used as it is; one minted with the local key is minted
    again every hour, so a console left running never sends an expired one.
    """

    def __init__(
        self,
        given: str | None,
        mint: Callable[[], str | None] = cli_token,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._given = given
        self._mint = mint
        self._clock = clock
        self._token: str | None = given
        self._minted_at = clock()
        if given is None:
            self._token = mint()

    @property
    def present(self) -> bool:
        return self._token is not None

    def token(self) -> str | None:
        if self._given is None and self._clock() - self._minted_at > _REMINT_SECONDS:
            self._token, self._minted_at = self._mint(), self._clock()
        return self._token


@dataclass(frozen=True)
class UserToken:
    """The token a request is served with, and where it came from."""

    token: str | None
    # "header", "cookie", "console" (the held credential) or "" (none).
    source: str


def user_token(request: HTTPConnection, held: HeldCredential | None) -> UserToken:
    """The token of the request's user (see the module docstring for the order)."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer " and header[7:].strip():
        return UserToken(header[7:].strip(), "header")
    cookie = request.cookies.get(COOKIE)
    if cookie:
        return UserToken(cookie, "cookie")
    if held is not None and held.present:
        return UserToken(held.token(), "console")
    return UserToken(None, "")


def subject(token: str | None) -> str:
    """The ``sub`` a token names, for display only: the coordinator verifies tokens;
    the console never trusts what it reads here."""
    if not token:
        return ""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return ""
    return str(claims.get("sub", ""))


class Guard:
    """ASGI middleware: the Host check when a credential is held, and the
    cross-site check on requests that change something (module docstring)."""

    def __init__(self, app: ASGIApp, holds_credential: bool) -> None:
        self.app = app
        self.holds_credential = holds_credential

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        host = connection.headers.get("host", "")
        problem = ""
        if self.holds_credential and not is_loopback(host_name(host)):
            problem = f"this console answers only as localhost, not as {host!r}"
        elif scope["method"] in _UNSAFE:
            origin = connection.headers.get("origin")
            if connection.headers.get(CSRF_HEADER) != "1":
                problem = f"a request that changes something needs the header {CSRF_HEADER}: 1"
            elif origin is not None and origin.split("://", 1)[-1] != host:
                problem = f"a request from {origin!r} is not the console's own"
        if problem:
            log.warning("console request refused method=%s reason=%s", scope["method"], problem)
            refusal = JSONResponse({"error": "FORBIDDEN", "message": problem}, status_code=403)
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

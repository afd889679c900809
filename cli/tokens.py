"""``sagawire token``: bearer tokens for the coordinator's public API, and which one the
CLI's own calls carry.

Every command that calls the coordinator sends, in this order of preference:

1. the token given with ``--token``, or in ``SAGAWIRE_TOKEN``;
2. else, when the stack's signing key is on this machine (``<data dir>/token-signing.key``,
   or ``SAGAWIRE_TOKEN_KEY_FILE``) and tokens are signed with it, an operator token the
   CLI mints with it for itself (whoever can read that file may mint any token anyway);
3. else none: the coordinator answers UNAUTHENTICATED, unless it runs with
   ``SAGAWIRE_AUTH=off``.

``sagawire demo`` and ``sagawire bench`` start their own stack and always use its key
(:func:`stack_token`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

import jwt
import typer

from common.config import BadSetting
from common.tokens import Role, TokenKeyError, TokenSettings, ensure_signing_key, issue_token

token_app = typer.Typer(no_args_is_help=True)

TOKEN_ENV = "SAGAWIRE_TOKEN"
# The subject of the tokens the CLI mints for itself.
LOCAL_OPERATOR = "local-operator"
# Long enough for a long bench run; it is only ever minted by whoever holds the key.
LOCAL_TTL_SECONDS = 12 * 3600

TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=TOKEN_ENV,
        show_envvar=True,
        help="Bearer token for the coordinator (default: one minted with the local stack's"
        " key, when it is on this machine).",
    ),
]


@token_app.callback()
def _token() -> None:
    """Bearer tokens for the coordinator's public API."""


_DURATION = re.compile(r"^(\d+)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def cli_token(given: str | None = None) -> str | None:
    """The token a command sends to the coordinator (see the module docstring).

    Raises:
        BadSetting: a given token (``--token`` or ``SAGAWIRE_TOKEN``) that is not a JWT.
    """
    token = given or os.environ.get(TOKEN_ENV)
    if token:
        try:
            jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            where = TOKEN_ENV if token == os.environ.get(TOKEN_ENV) else "--token"
            raise BadSetting(where, "not a JWT (header.payload.signature)") from None
        return token
    return _local_operator(TokenSettings())


def stack_token(data_dir: Path) -> str | None:
    """An operator token for the stack a command started itself in ``data_dir`` (its
    coordinator made the signing key there at its start)."""
    return _local_operator(TokenSettings(data_dir=data_dir))


def _local_operator(settings: TokenSettings) -> str | None:
    if not settings.local_key or not settings.key_path.exists():
        return None
    key = ensure_signing_key(settings.key_path)
    return issue_token(key, settings, LOCAL_OPERATOR, Role.OPERATOR, LOCAL_TTL_SECONDS)


def _seconds(value: str) -> int:
    match = _DURATION.match(value.strip())
    if not match or int(match.group(1)) == 0:
        raise typer.BadParameter(f"{value!r}: expected a duration such as 30m, 12h or 7d")
    return int(match.group(1)) * _SECONDS[match.group(2)]


@token_app.command("issue")
def issue(
    customer: Annotated[
        str | None, typer.Option(help="A customer token: places and reads this customer's orders.")
    ] = None,
    operator: Annotated[
        bool, typer.Option("--operator", help="An operator token: may do everything.")
    ] = False,
    subject: Annotated[
        str, typer.Option(help="The operator token's subject (who it names in logs).")
    ] = "operator",
    ttl: Annotated[str, typer.Option(help="How long it is valid: 30m, 12h, 7d.")] = "1h",
    data: Annotated[
        Path | None,
        typer.Option(help="The stack's data directory (default SAGAWIRE_DATA_DIR or .sagawire)."),
    ] = None,
) -> None:
    """Print a token signed with the stack's local key (made first if there is none).

    Use it as ``SAGAWIRE_TOKEN=...`` for the CLI, or ``-H "authorization: Bearer ..."``
    with grpcurl.
    """
    if (customer is None) == (not operator):
        raise typer.BadParameter("give exactly one of --customer NAME or --operator")
    settings = TokenSettings() if data is None else TokenSettings(data_dir=data)
    if not settings.local_key:
        raise typer.BadParameter(
            "tokens come from the identity provider here (SAGAWIRE_TOKEN_JWKS_URL or"
            " SAGAWIRE_TOKEN_OIDC is set); ask it for one"
        )
    try:
        key = ensure_signing_key(settings.key_path)
    except TokenKeyError as error:
        raise typer.BadParameter(str(error)) from None
    role, name = (Role.OPERATOR, subject) if operator else (Role.CUSTOMER, customer or "")
    if not name.strip():
        raise typer.BadParameter("the subject must not be empty")
    typer.echo(issue_token(key, settings, name, role, _seconds(ttl)))

"""Bearer tokens (JWT) for the coordinator's public API: the signing key, issuing and
verifying tokens (PyJWT), and sending one with a call.

Settings (``SAGAWIRE_*``)::

    AUTH                on (default) | off: off is the only way to serve the public API
                        without tokens (every caller is then an operator), and the
                        coordinator says so loudly at start
    TOKEN_KEY_FILE      the local signing key (default <DATA_DIR>/token-signing.key)
    TOKEN_ISSUER        the ``iss`` every token must carry (default sagawire-local)
    TOKEN_AUDIENCE      the ``aud`` every token must carry (default sagawire)
    TOKEN_JWKS_URL      verify with an identity provider's keys (a JWKS) instead of the
                        local key
    TOKEN_OIDC          true: find the JWKS through OpenID Connect discovery of the
                        issuer (<TOKEN_ISSUER>/.well-known/openid-configuration)
    TOKEN_ROLE_CLAIM    the claim holding the role (default ``role``): a string or a
                        list of strings, among them ``customer`` or ``operator``
    TOKEN_ALGORITHMS    the algorithms accepted from a JWKS, a JSON list
                        (default ["EdDSA", "ES256", "RS256"])
    TOKEN_LEEWAY_SECONDS  clock skew allowed on exp, nbf and iat (default 30)

**The local key** is an Ed25519 private key (PKCS#8 PEM, mode 0600). The coordinator
makes it on its first start when it is missing and never overwrites one (two processes
making it at once end up with the same file); it verifies tokens with the public half,
and ``sagawire token issue`` signs with it. Anyone who can read that file can mint any
token: it is the local stack's operator credential. With a JWKS (or OIDC) configured
the local key is neither made nor read.

**A token** is a JWT with ``iss``, ``aud``, ``exp`` and ``sub`` (all required) and the
role claim. For a customer, ``sub`` is the customer id: the coordinator lets it place
orders as that customer only and read only that customer's sagas (coordinator/api/auth.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar, cast

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.errors import PermissionDenied, Transient, Unauthenticated

log = logging.getLogger(__name__)

KEY_FILE = "token-signing.key"
LOCAL_ALGORITHM = "EdDSA"
METADATA_KEY = "authorization"
_SCHEME = "bearer "
# Verified tokens kept, so a client's every call does not cost a signature check.
_CACHE_SIZE = 4096

AUTH_OFF_WARNING = (
    "AUTH OFF (SAGAWIRE_AUTH=off): the coordinator's public API takes no token; every "
    "caller may place orders as anyone, read every saga and retry any. Use only on a "
    "machine you alone can reach."
)


class Role(StrEnum):
    CUSTOMER = "customer"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Caller:
    """Who a verified token says is calling."""

    subject: str
    role: Role

    @property
    def operator(self) -> bool:
        return self.role is Role.OPERATOR

    def acts_for(self, customer_id: str) -> bool:
        """Whether this caller may act for (and see the sagas of) ``customer_id``."""
        return self.operator or customer_id == self.subject


# With SAGAWIRE_AUTH=off every caller is this one.
UNCHECKED = Caller(subject="(auth off)", role=Role.OPERATOR)


# What a JWKS may sign with: public-key algorithms only (a shared secret in a JWKS would
# let anyone who fetched it mint tokens).
ASYMMETRIC_ALGORITHMS = (
    "EdDSA",
    "ES256",
    "ES384",
    "ES512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
)


class TokenSettings(BaseSettings):
    """How tokens are issued and verified; see the module docstring for each variable."""

    model_config = SettingsConfigDict(env_prefix="SAGAWIRE_", extra="ignore")

    auth: bool = True
    data_dir: Path = Path(".sagawire")
    token_key_file: Path | None = None
    token_issuer: str = Field(default="sagawire-local", min_length=1)
    token_audience: str = Field(default="sagawire", min_length=1)
    token_jwks_url: str = ""
    token_oidc: bool = False
    token_role_claim: str = Field(default="role", min_length=1)
    token_algorithms: tuple[str, ...] = ("EdDSA", "ES256", "RS256")
    token_leeway_seconds: float = Field(default=30.0, ge=0, le=600)

    @field_validator("token_jwks_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value

    @field_validator("token_algorithms")
    @classmethod
    def _asymmetric(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one algorithm")
        if unknown := [a for a in value if a not in ASYMMETRIC_ALGORITHMS]:
            raise ValueError(
                f"{', '.join(map(repr, unknown))}: expected public-key algorithms"
                f" ({', '.join(ASYMMETRIC_ALGORITHMS)})"
            )
        return value

    @property
    def key_path(self) -> Path:
        return self.token_key_file or self.data_dir / KEY_FILE

    @property
    def local_key(self) -> bool:
        """Whether tokens are signed (and verified) with the local key."""
        return not self.token_jwks_url and not self.token_oidc


# -- the local signing key -----------------------------------------------------------


def ensure_signing_key(path: Path) -> Ed25519PrivateKey:
    """The key at ``path``, made first if there is none; an existing one is never replaced.

    Written to a private temporary file and linked into place, which fails if the
    file appeared meanwhile: then the other writer's key is the key.
    """
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(temporary, path)
                log.info("token signing key created path=%s", path)
            except FileExistsError:
                pass
        finally:
            temporary.unlink(missing_ok=True)
    return load_signing_key(path)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key (PEM); a SystemExit-worthy message when it is not one."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as error:
        raise TokenKeyError(f"cannot read the token signing key {path}: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TokenKeyError(f"{path} is not an Ed25519 private key")
    return key


class TokenKeyError(Exception):
    """The local signing key is missing or unreadable; the message says which file."""


def key_id(key: Ed25519PublicKey) -> str:
    """A short, stable name of a public key (the token header's ``kid``)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- issuing ---------------------------------------------------------------------------


def issue_token(
    key: Ed25519PrivateKey,
    settings: TokenSettings,
    subject: str,
    role: Role,
    ttl_seconds: float,
) -> str:
    """A token for ``subject`` in ``role``, valid for ``ttl_seconds``, signed with ``key``."""
    if not subject:
        raise ValueError("a token needs a subject")
    now = int(time.time())
    claims = {
        "iss": settings.token_issuer,
        "aud": settings.token_audience,
        "sub": subject,
        settings.token_role_claim: role.value,
        "iat": now,
        "exp": now + int(ttl_seconds),
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(
        claims, key, algorithm=LOCAL_ALGORITHM, headers={"kid": key_id(key.public_key())}
    )


def local_token(settings: TokenSettings, role: Role, subject: str, ttl_seconds: float) -> str:
    """A token signed with the local key, made first if missing."""
    return issue_token(ensure_signing_key(settings.key_path), settings, subject, role, ttl_seconds)


# -- verifying -------------------------------------------------------------------------


class TokenVerifier:
    """Verifies bearer tokens: signature, ``exp``, ``iss``, ``aud``, then the role.

    Raises :class:`Unauthenticated` for a missing, malformed, expired or foreign token,
    :class:`PermissionDenied` for a valid one with no Sagawire role, and
    :class:`Transient` when the identity provider's keys cannot be fetched.
    """

    def __init__(self, settings: TokenSettings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._public: Ed25519PublicKey | None = None
        self._jwks: jwt.PyJWKClient | None = None
        self._algorithms: list[str] = [LOCAL_ALGORITHM]
        if settings.local_key:
            self._public = ensure_signing_key(settings.key_path).public_key()
        else:
            self._algorithms = list(settings.token_algorithms)
        self._verified: OrderedDict[str, tuple[Caller, float]] = OrderedDict()

    async def verify(self, token: str) -> Caller:
        cached = self._verified.get(token)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        key: Any = self._public
        if key is None:
            key = await asyncio.to_thread(self._jwks_key, token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._settings.token_audience,
                issuer=self._settings.token_issuer,
                leeway=self._settings.token_leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(f"invalid token: {error}") from None
        caller = Caller(str(claims["sub"]), self._role(claims))
        if not caller.subject:
            raise Unauthenticated("invalid token: empty subject")
        self._verified[token] = (caller, float(claims["exp"]))
        if len(self._verified) > _CACHE_SIZE:
            self._verified.popitem(last=False)
        return caller

    def _role(self, claims: Mapping[str, Any]) -> Role:
        given = claims.get(self._settings.token_role_claim)
        roles = {given} if isinstance(given, str) else set(given or ())
        if Role.OPERATOR.value in roles:
            return Role.OPERATOR
        if Role.CUSTOMER.value in roles:
            return Role.CUSTOMER
        raise PermissionDenied(
            f"the token's {self._settings.token_role_claim!r} claim names no Sagawire role"
            " (customer or operator)"
        )

    def _jwks_key(self, token: str) -> Any:
        """The identity provider's key that signed ``token`` (blocking: run in a thread)."""
        try:
            if self._jwks is None:
                url = self._settings.token_jwks_url or _discover_jwks(self._settings.token_issuer)
                self._jwks = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)
            return self._jwks.get_signing_key_from_jwt(token).key
        except (jwt.PyJWKClientConnectionError, OSError, ValueError) as error:
            raise Transient(f"cannot fetch the token issuer's keys: {error}") from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as error:
            raise Unauthenticated(f"invalid token: {error}") from None


def _discover_jwks(issuer: str) -> str:
    """OpenID Connect discovery: the issuer's ``jwks_uri``."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    if not url.startswith("https://"):
        raise ValueError(f"OIDC discovery needs an https issuer, got {issuer!r}")
    with urllib.request.urlopen(url, timeout=5) as reply:  # https only: checked above
        document = json.loads(reply.read())
    jwks_uri = document.get("jwks_uri") if isinstance(document, dict) else None
    if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
        raise ValueError(f"{url} names no https jwks_uri")
    return jwks_uri


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, if there is one."""
    for key, value in metadata or ():
        if key.lower() != METADATA_KEY:
            continue
        text = value.decode() if isinstance(value, bytes) else value
        if text[: len(_SCHEME)].lower() == _SCHEME and text[len(_SCHEME) :].strip():
            return text[len(_SCHEME) :].strip()
        return None
    return None


# -- sending one -----------------------------------------------------------------------

_Stub = TypeVar("_Stub")


class _WithToken:
    """A stub whose every call carries ``authorization: Bearer <token>``."""

    def __init__(self, stub: object, token: str) -> None:
        self._stub = stub
        self._metadata = ((METADATA_KEY, f"Bearer {token}"),)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)
        extra = self._metadata

        def call(request: Any, *args: Any, metadata: Any = None, **kwargs: Any) -> Any:
            return method(request, *args, metadata=(*extra, *(metadata or ())), **kwargs)

        return call


def with_token(stub: _Stub, token: str | None) -> _Stub:
    """``stub`` (sync or asyncio) sending ``token`` with every call; unchanged for None.

    Works at the call, not the channel: whoever makes the channel (TLS or not) need not
    know about tokens.
    """
    return stub if token is None else cast(_Stub, _WithToken(stub, token))

"""Bearer tokens: the local signing key, issuing, verifying (local key and a JWKS)."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.errors import PermissionDenied, Transient, Unauthenticated
from common.tokens import (
    KEY_FILE,
    Caller,
    Role,
    TokenSettings,
    TokenVerifier,
    bearer_token,
    ensure_signing_key,
    issue_token,
    key_id,
)


@pytest.fixture
def settings(tmp_path: Path) -> TokenSettings:
    return TokenSettings(data_dir=tmp_path, token_key_file=None)


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# -- the local key ------------------------------------------------------------------------


def test_the_key_is_made_on_first_use_private_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "keys" / KEY_FILE
    first = ensure_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    written = path.read_bytes()
    again = ensure_signing_key(path)
    assert path.read_bytes() == written
    assert public_pem(again) == public_pem(first)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_processes_making_the_key_at_once_end_up_with_one_key(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: public_pem(ensure_signing_key(path)), range(16)))
    assert len(set(keys)) == 1


def test_a_key_that_is_not_ed25519_is_refused(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    other = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(Exception, match="not an Ed25519 private key"):
        ensure_signing_key(path)


# -- the local key's tokens -----------------------------------------------------------------


async def test_an_issued_token_names_its_subject_and_role(settings: TokenSettings) -> None:
    key = ensure_signing_key(settings.key_path)
    verifier = TokenVerifier(settings)
    alice = issue_token(key, settings, "alice", Role.CUSTOMER, 60)
    ops = issue_token(key, settings, "ops", Role.OPERATOR, 60)
    assert await verifier.verify(alice) == Caller("alice", Role.CUSTOMER)
    assert await verifier.verify(ops) == Caller("ops", Role.OPERATOR)
    assert jwt.get_unverified_header(alice)["kid"] == key_id(key.public_key())


def test_the_verifier_makes_the_local_key_when_missing(settings: TokenSettings) -> None:
    TokenVerifier(settings)
    assert settings.key_path.exists()


def _signed(key: Any, algorithm: str = "EdDSA", **claims: Any) -> str:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": "sagawire-local",
        "aud": "sagawire",
        "sub": "alice",
        "role": "customer",
        "exp": now + 60,
    }
    given = {k: v for k, v in {**base, **claims}.items() if v is not None}
    return jwt.encode(given, key, algorithm=algorithm)


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(time.time()) - 3600},  # expired
        {"exp": None},  # no expiry at all
        {"aud": "someone-else"},
        {"aud": None},
        {"iss": "https://evil.example"},
        {"sub": None},
        {"sub": ""},
    ],
    ids=["expired", "no-exp", "wrong-aud", "no-aud", "wrong-iss", "no-sub", "empty-sub"],
)
async def test_a_token_with_bad_claims_is_unauthenticated(
    settings: TokenSettings, claims: dict[str, Any]
) -> None:
    key = ensure_signing_key(settings.key_path)
    with pytest.raises(Unauthenticated):
        await TokenVerifier(settings).verify(_signed(key, **claims))


async def test_a_token_signed_with_another_key_is_unauthenticated(
    settings: TokenSettings,
) -> None:
    verifier = TokenVerifier(settings)
    with pytest.raises(Unauthenticated, match="invalid token"):
        await verifier.verify(_signed(Ed25519PrivateKey.generate()))
    with pytest.raises(Unauthenticated):
        await verifier.verify("not-a-token")
    # "alg: none" is never accepted.
    with pytest.raises(Unauthenticated):
        await verifier.verify(_signed(None, algorithm="none"))


async def test_the_role_claim_may_be_a_list_and_must_name_a_role(
    settings: TokenSettings,
) -> None:
    key = ensure_signing_key(settings.key_path)
    verifier = TokenVerifier(settings)
    listed = _signed(key, role=["reader", "operator"])
    assert (await verifier.verify(listed)).role is Role.OPERATOR
    with pytest.raises(PermissionDenied):
        await verifier.verify(_signed(key, role="admin"))
    with pytest.raises(PermissionDenied):
        await verifier.verify(_signed(key, role=None))


async def test_a_verified_token_is_remembered_until_it_expires(
    settings: TokenSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = ensure_signing_key(settings.key_path)
    now = [time.time()]
    verifier = TokenVerifier(settings, clock=lambda: now[0])
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    token = issue_token(key, settings, "alice", Role.CUSTOMER, 60)
    await verifier.verify(token)
    await verifier.verify(token)
    assert len(decoded) == 1  # the second call was answered from memory
    now[0] += 120  # past the token's exp: checked afresh
    await verifier.verify(token)
    assert len(decoded) == 2


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ((("authorization", "Bearer abc.def"),), "abc.def"),
        ((("authorization", "bearer  abc "),), "abc"),
        ((("x-other", "1"), ("authorization", b"Bearer xyz")), "xyz"),
        ((("authorization", "Basic dXNlcg=="),), None),
        ((("authorization", "Bearer "),), None),
        ((), None),
        (None, None),
    ],
)
def test_the_bearer_token_is_read_from_the_authorization_metadata(
    metadata: Any, token: str | None
) -> None:
    assert bearer_token(metadata) == token


# -- an identity provider's keys (JWKS) ---------------------------------------------------


class _Jwks:
    """A JWKS endpoint on 127.0.0.1, as an identity provider serves its public keys."""

    def __init__(self, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def idp_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def jwks(idp_key: ec.EllipticCurvePrivateKey) -> Iterator[_Jwks]:
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(idp_key.public_key()))
    server = _Jwks({"keys": [{**public, "kid": "idp-1", "use": "sig", "alg": "ES256"}]})
    yield server
    server.close()


def _idp_settings(tmp_path: Path, url: str) -> TokenSettings:
    return TokenSettings(
        data_dir=tmp_path,
        token_jwks_url=url,
        token_issuer="https://idp.example",
        token_audience="sagawire-api",
    )


def _idp_token(key: ec.EllipticCurvePrivateKey, kid: str = "idp-1", **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": "https://idp.example",
        "aud": "sagawire-api",
        "sub": "bob",
        "role": "customer",
        "exp": now + 60,
        **claims,
    }
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": kid})


async def test_tokens_of_an_identity_provider_are_verified_with_its_jwks(
    tmp_path: Path, jwks: _Jwks, idp_key: ec.EllipticCurvePrivateKey
) -> None:
    verifier = TokenVerifier(_idp_settings(tmp_path, jwks.url))
    assert await verifier.verify(_idp_token(idp_key)) == Caller("bob", Role.CUSTOMER)
    assert not (tmp_path / KEY_FILE).exists()  # the local key is neither made nor used
    with pytest.raises(Unauthenticated):
        await verifier.verify(_idp_token(idp_key, kid="unknown"))
    with pytest.raises(Unauthenticated):
        await verifier.verify(_idp_token(ec.generate_private_key(ec.SECP256R1())))


async def test_an_unreachable_identity_provider_is_transient(
    tmp_path: Path, idp_key: ec.EllipticCurvePrivateKey
) -> None:
    down = _Jwks({"keys": []})
    url = down.url
    down.close()
    with pytest.raises(Transient):
        await TokenVerifier(_idp_settings(tmp_path, url)).verify(_idp_token(idp_key))

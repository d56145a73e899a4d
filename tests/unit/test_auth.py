"""Bearer tokens (shared.auth): only an asymmetric signature from the trusted key, for our issuer
and audience, unexpired, with well-formed claims, makes a Principal; the tenant is the token's."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import HTTPException

from shared.auth import DEV_AUDIENCE, DEV_ISSUER, InvalidToken, Principal, TokenVerifier, generate_key_pair, mint
from shared.cli import main as cli


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    private, public = generate_key_pair(tmp_path_factory.mktemp("auth"))
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    return private.read_bytes(), public.read_bytes()


@pytest.fixture(scope="module")
def verifier(keys: tuple[bytes, bytes]) -> TokenVerifier:
    return TokenVerifier(issuer=DEV_ISSUER, audience=DEV_AUDIENCE, public_key_pem=keys[1])


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "u-1", "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "iat": now, "exp": now + 600}
    return {**base, "practice_ids": ["pr-1"], "roles": ["manager"], **overrides}


def es256(private_pem: bytes, body: dict[str, Any]) -> str:
    return jwt.encode(body, serialization.load_pem_private_key(private_pem, None), algorithm="ES256")  # type: ignore[arg-type]


def unsigned(body: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(body)}."


def test_a_minted_token_makes_its_principal(keys: tuple[bytes, bytes], verifier: TokenVerifier) -> None:
    token = mint(keys[0], practice_ids=["pr-1", "pr-2"], roles=["biller"], subject="ana")
    assert verifier.verify(token) == Principal("ana", frozenset({"pr-1", "pr-2"}), frozenset({"biller"}))


def hs256_with(secret: bytes, body: dict[str, Any]) -> str:
    """The classic confusion attack: HMAC keyed with the public key (PyJWT itself refuses to build it)."""
    import hashlib
    import hmac

    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    signing_input = f"{part(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{part(json.dumps(body).encode())}"
    return f"{signing_input}.{part(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def _other_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


REFUSED = {
    "expired": lambda k: es256(k[0], claims(exp=int(time.time()) - 120)),
    "wrong issuer": lambda k: es256(k[0], claims(iss="someone-else")),
    "wrong audience": lambda k: es256(k[0], claims(aud="another-api")),
    "no expiry": lambda k: es256(k[0], {key: v for key, v in claims().items() if key != "exp"}),
    "no subject": lambda k: es256(k[0], {key: v for key, v in claims().items() if key != "sub"}),
    "HS256 signed with the public key": lambda k: hs256_with(k[1], claims()),
    "alg none": lambda k: unsigned(claims()),
    "signed by another key": lambda k: jwt.encode(claims(), _other_key_pem(), algorithm="RS256"),
    "an unknown role": lambda k: es256(k[0], claims(roles=["admin"])),
    "no role at all": lambda k: es256(k[0], claims(roles=[])),
    "21 roles": lambda k: es256(k[0], claims(roles=["owner"] * 21)),
    "practice ids not a list": lambda k: es256(k[0], claims(practice_ids="pr-1")),
    "a practice id with a space": lambda k: es256(k[0], claims(practice_ids=["pr 1"])),
    "garbage": lambda k: "not.a.token",
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_token_that_cannot_be_trusted_is_refused(
    case: str, keys: tuple[bytes, bytes], verifier: TokenVerifier
) -> None:
    token = REFUSED[case](keys)
    with pytest.raises(InvalidToken) as refused:
        verifier.verify(token)
    assert token not in str(refused.value)  # a sentence, never the token echoed back


def test_an_rsa_key_verifies_rs256(tmp_path: Path) -> None:
    private_pem = _other_key_pem()
    public_pem = (
        serialization.load_pem_private_key(private_pem, None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    verifier = TokenVerifier(issuer=DEV_ISSUER, audience=DEV_AUDIENCE, public_key_pem=public_pem)
    assert verifier.verify(jwt.encode(claims(), private_pem, algorithm="RS256")).subject == "u-1"


def test_exactly_one_key_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        TokenVerifier(issuer="i", audience="a")


OPS = Principal("o", frozenset(), frozenset({"ops"}))
STAFF = Principal("s", frozenset({"pr-1", "pr-2"}), frozenset({"receptionist"}))


def test_the_tenant_comes_from_the_token() -> None:
    assert STAFF.can_read("pr-1") and not STAFF.can_read("pr-3") and not STAFF.can_read(None)
    assert OPS.can_read("pr-3") and OPS.can_read(None)
    assert STAFF.practices() == ["pr-1", "pr-2"] and STAFF.practices("pr-2") == ["pr-2"]
    assert OPS.practices() is None and OPS.practices("pr-9") == ["pr-9"]
    with pytest.raises(HTTPException) as hidden:
        STAFF.practices("pr-3")
    assert hidden.value.status_code == 404


def test_the_cli_prints_a_token_the_services_trust(
    keys: tuple[bytes, bytes], verifier: TokenVerifier, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "private.pem"
    key.write_bytes(keys[0])
    assert cli(["token", "--practice", "pr-1", "--role", "owner", "--ttl", "60", "--key", str(key)]) == 0
    principal = verifier.verify(capsys.readouterr().out.strip())
    assert principal.practice_ids == {"pr-1"} and principal.roles == {"owner"}
    with pytest.raises(SystemExit):
        cli(["token", "--role", "owner", "--key", str(key)])  # a practice token names its practice


@pytest.fixture
def jwks_url(keys: tuple[bytes, bytes]) -> Iterator[str]:
    """An identity provider's JWKS endpoint on loopback, publishing our public key as `k1`."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    jwk = jwt.algorithms.ECAlgorithm.to_jwk(serialization.load_pem_public_key(keys[1]), as_dict=True)
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "ES256"}]}).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json"
    finally:
        server.shutdown()


def test_keys_from_a_jwks_url_verify_tokens_by_their_kid(keys: tuple[bytes, bytes], jwks_url: str) -> None:
    verifier = TokenVerifier(issuer=DEV_ISSUER, audience=DEV_AUDIENCE, jwks_url=jwks_url)
    signing_key = serialization.load_pem_private_key(keys[0], None)
    token = jwt.encode(claims(), signing_key, algorithm="ES256", headers={"kid": "k1"})  # type: ignore[arg-type]
    assert verifier.verify(token).practice_ids == {"pr-1"}
    unknown = jwt.encode(claims(), signing_key, algorithm="ES256", headers={"kid": "k2"})  # type: ignore[arg-type]
    with pytest.raises(InvalidToken, match="no key"):
        verifier.verify(unknown)

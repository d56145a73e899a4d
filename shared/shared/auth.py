"""Who is asking: OAuth2 bearer tokens (JWT) for every read API, verified with PyJWT.

Guarantees:
- Only asymmetric signatures are accepted (RS256, ES256): a token signed with HMAC, or with
  `alg: none`, is refused whatever key it names, so a public key can never be used as a secret.
- `iss`, `aud`, `exp` and `sub` are required and checked; a missing, expired, forged or
  malformed token answers 401 with `WWW-Authenticate: Bearer`.
- The verifying keys come from a JWKS URL (`AUTH_JWKS_URL`, cached and refreshed by PyJWT's
  `PyJWKClient`) or a PEM public key file (`AUTH_PUBLIC_KEY_FILE`), by setting.
- The tenant comes from the token (`practice_ids`), never from the request: `Principal.can_read`
  is the one check every route makes; `ops` reads across practices.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .contracts.common import IDS_MAX_ITEMS, ROLES_MAX_ITEMS, valid_id

ALGORITHMS = ["RS256", "ES256"]
ROLES = frozenset({"owner", "manager", "biller", "therapist", "financial", "receptionist", "ops"})
FEE_ROLES = frozenset({"owner", "manager", "biller", "financial", "ops"})  # who reads money
DEV_ISSUER = "cancellations-dev"
DEV_AUDIENCE = "cancellations"


class InvalidToken(Exception):
    """The token cannot be trusted; the sentence says why (never the token itself)."""


@dataclass(frozen=True)
class Principal:
    """Who asks, for which practices, in which roles."""

    subject: str
    practice_ids: frozenset[str]
    roles: frozenset[str]

    @property
    def is_ops(self) -> bool:
        return "ops" in self.roles

    def can_read(self, practice_id: str | None) -> bool:
        """May this principal see what belongs to `practice_id`? (Nothing without a practice,
        unless ops.)"""
        return self.is_ops or (practice_id is not None and practice_id in self.practice_ids)

    def practices(self, asked: str | None = None) -> list[str] | None:
        """The practices a list may show: the one asked for (when allowed), else all of the
        token's; None means every practice (ops without a filter). A practice the token does not
        cover answers as if it had nothing: 404."""
        if asked is not None:
            if not self.can_read(asked):
                raise HTTPException(status.HTTP_404_NOT_FOUND, "no such practice")
            return [asked]
        return None if self.is_ops else sorted(self.practice_ids)


class TokenVerifier:
    """Verifies bearer tokens against the configured keys, issuer and audience."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        public_key_pem: bytes | None = None,
        leeway_seconds: int = 30,
    ) -> None:
        if (jwks_url is None) == (public_key_pem is None):
            raise ValueError("set exactly one of AUTH_JWKS_URL and AUTH_PUBLIC_KEY_FILE")
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        # The key set is cached for five minutes (a rotated-out key stops verifying within that);
        # a short timeout, since verification runs in FastAPI's threadpool, not on the event loop.
        self._jwks = jwt.PyJWKClient(jwks_url, lifespan=300, timeout=5) if jwks_url else None
        self._key = serialization.load_pem_public_key(public_key_pem) if public_key_pem else None

    def _signing_key(self, token: str) -> Any:
        if self._jwks is not None:
            try:
                return self._jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientError as exc:
                raise InvalidToken(f"no key for this token ({type(exc).__name__})") from None
        return self._key

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in ALGORITHMS:
                raise InvalidToken("the token must be signed with RS256 or ES256")
            claims = jwt.decode(
                token,
                self._signing_key(token),
                algorithms=ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except InvalidToken:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever fails while verifying, the token is not trusted
            # (e.g. PyJWT raises TypeError for an RS256 token checked against an EC key)
            raise InvalidToken(f"the token is not valid ({type(exc).__name__})") from None
        return _principal(claims)


def _principal(claims: dict[str, Any]) -> Principal:
    subject, practice_ids, roles = claims.get("sub"), claims.get("practice_ids", []), claims.get("roles", [])
    if not isinstance(subject, str) or not 0 < len(subject) <= 256:
        raise InvalidToken("the token's sub must be a string")
    if not isinstance(practice_ids, list) or len(practice_ids) > IDS_MAX_ITEMS:
        raise InvalidToken("the token's practice_ids must be a list of practice ids")
    if not all(valid_id(p) for p in practice_ids):
        raise InvalidToken("the token's practice_ids must be a list of practice ids")
    if not isinstance(roles, list) or not 0 < len(roles) <= ROLES_MAX_ITEMS:
        raise InvalidToken("the token must carry at least one role")
    if not all(isinstance(r, str) for r in roles) or not set(roles) <= ROLES:
        raise InvalidToken(f"the token's roles must be some of {sorted(ROLES)}")
    return Principal(subject=subject, practice_ids=frozenset(practice_ids), roles=frozenset(roles))


# --- FastAPI --------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="A JWT from the identity provider (RS256 or ES256)")


def authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller, from a valid bearer token; 401 otherwise. A plain function on purpose:
    FastAPI runs it in its threadpool, so fetching a JWKS never blocks the consumers' event loop."""
    verifier: TokenVerifier = request.app.state.verifier
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("a bearer token is required")
    try:
        return verifier.verify(credentials.credentials)
    except InvalidToken as exc:
        raise _unauthorized(str(exc)) from None


def with_role(roles: frozenset[str]) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: the caller, who must hold one of `roles` (403 otherwise)."""

    async def check(principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
        if not principal.roles & roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs one of the roles {sorted(roles)}")
        return principal

    return check


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, reason, headers={"WWW-Authenticate": "Bearer"})


# --- development: a key pair and tokens -------------------------------------------------------


def generate_key_pair(directory: Path) -> tuple[Path, Path]:
    """An ES256 key pair (private.pem mode 0600, public.pem) in `directory`, kept if present."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / "private.pem", directory / "public.pem"
    if not private_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        private_path.touch(mode=0o600)
        private_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        public_path.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    return private_path, public_path


def mint(
    private_key_pem: bytes,
    *,
    practice_ids: Sequence[str],
    roles: Sequence[str],
    subject: str = "dev-user",
    ttl_seconds: int = 3600,
    issuer: str = DEV_ISSUER,
    audience: str = DEV_AUDIENCE,
) -> str:
    """A signed token (ES256) for development and tests."""
    unknown = set(roles) - ROLES
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)}; roles are {sorted(ROLES)}")
    now = int(time.time())
    claims = {
        "sub": subject,
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "exp": now + ttl_seconds,
        "jti": str(uuid.uuid4()),
        "practice_ids": list(practice_ids),
        "roles": list(roles),
    }
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    return jwt.encode(claims, key, algorithm="ES256")  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m shared.auth keygen DIR`: the development key pair."""
    parser = argparse.ArgumentParser(prog="python -m shared.auth")
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="create the development signing key pair (kept if present)")
    keygen.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    private_path, public_path = generate_key_pair(args.directory)
    print(f"auth: signing key {private_path}, public key {public_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

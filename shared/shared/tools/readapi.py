"""Where the services' read APIs are, and a development token to read them with.

Each service's base URL is `<SERVICE>_API_URL` (BOOKING_API_URL, CANCELLATION_POLICY_API_URL,
SCORING_API_URL, BILLING_API_URL, NOTIFICATION_API_URL, PMS_SYNC_API_URL), by default the port
`make run` gives it on loopback (docs/design.md "The services").
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import auth

DEFAULT_PORTS = {
    "booking": 8001,
    "cancellation-policy": 8002,
    "scoring": 8003,
    "billing": 8004,
    "notification": 8005,
    "pms-sync": 8006,
}


def service_urls(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {
        service: (env.get(f"{service.upper().replace('-', '_')}_API_URL") or f"http://127.0.0.1:{port}").rstrip("/")
        for service, port in DEFAULT_PORTS.items()
    }


def development_token(
    roles: Sequence[str],
    practice_ids: Sequence[str] = (),
    *,
    subject: str = "cancellations-cli",
    ttl_seconds: int = 900,
    environ: Mapping[str, str] | None = None,
) -> str:
    """A token signed with the development key (AUTH_PRIVATE_KEY_FILE), for what `make run` runs."""
    env = os.environ if environ is None else environ
    key = Path(env.get("AUTH_PRIVATE_KEY_FILE", ".local/auth/private.pem"))
    if not key.is_file():
        raise FileNotFoundError(f"no signing key at {key}: run `make run` (or `make up`) first")
    return auth.mint(
        key.read_bytes(),
        practice_ids=practice_ids,
        roles=roles,
        subject=subject,
        ttl_seconds=ttl_seconds,
        issuer=env.get("AUTH_ISSUER", auth.DEV_ISSUER),
        audience=env.get("AUTH_AUDIENCE", auth.DEV_AUDIENCE),
    )

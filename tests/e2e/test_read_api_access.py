"""Who may read what, on the six running services: every read route of every service (found in
its own OpenAPI document) against a table of tokens, after one marketplace day has given each
route something to show — a staff late cancellation with a fee, a card payment, a kept
deposit, a PMS sync and the patient's email; a professional's late cancellation and excuse.

| token | practice routes | fee routes (billing) | ops-only routes (a professional's record) |
|---|---|---|---|
| none, expired, wrong issuer, wrong audience, HS256 with the public key, alg none, forged | 401 | 401 | 401 |
| another practice (owner) | 404 (reports over the token's practices: 200 without ours) | 404 | 403 |
| the right practice, receptionist | 200 | 403 | 403 |
| the right practice, manager | 200 | 200 | 403 |
| ops | 200 | 200 | 200 |
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.auth import DEV_AUDIENCE, DEV_ISSUER
from shared.testing import SERVICE_MODULES, EventWatcher, dev_token, iso, unique, wait_for_row
from shared.topics import (
    BILLING_EVENTS,
    BOOKING_EVENTS,
    NOTIFICATION_EVENTS,
    PMS_SYNC_EVENTS,
    SCORING_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
    UPSTREAM_PROFESSIONALS,
)

pytestmark = pytest.mark.e2e

OPEN = {"/healthz", "/readyz", "/metrics"}
PRAKTIKA = "pms-sync.praktika.v1"


async def _a_marketplace_day(infra, publisher) -> dict[str, str]:
    """The ids every route can be asked about, once each service has them."""
    ids = {
        "practice_id": unique("practice"),
        "booking_id": unique("booking"),
        "patient_id": unique("patient"),
        "professional_id": unique("pro"),
        "excuse_id": unique("excuse"),
    }
    pro_booking = unique("booking")
    starts = datetime.now(UTC) + timedelta(hours=6)
    fee = {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}
    watched = [BOOKING_EVENTS, BILLING_EVENTS, NOTIFICATION_EVENTS, SCORING_EVENTS, PMS_SYNC_EVENTS, PRAKTIKA]
    async with EventWatcher(infra.bootstrap, watched) as w:
        await publisher.event(
            UPSTREAM_PRACTICES,
            "practice.configured",
            ids["practice_id"],
            {
                "practice_id": ids["practice_id"],
                "name": "Harbour Dental",
                "timezone": "Australia/Sydney",
                "locale": "en",
                "fees": {"late_cancellation": fee, "charge_card_on_file": True},
                "pms": {"integration": "praktika"},
            },
        )
        for booking_id, professional in ((ids["booking_id"], None), (pro_booking, ids["professional_id"])):
            await publisher.event(
                UPSTREAM_BOOKINGS,
                "booking.scheduled",
                booking_id,
                {
                    "booking_id": booking_id,
                    "practice_id": ids["practice_id"],
                    "starts_at": iso(starts),
                    "ends_at": iso(starts + timedelta(minutes=45)),
                    "practitioner_id": "dr-lee",
                    "service_code": "D1110",
                    "deposit": {"amount": "20.00", "currency": "AUD"},
                    **({"professional_id": professional} if professional else {}),
                    "patient": {
                        "patient_id": ids["patient_id"],
                        "first_name": "Ann",
                        "email": f"{ids['patient_id']}@patients.test",
                        "portal_account": True,
                        "card_on_file": True,
                        "locale": "en",
                    },
                },
            )
        for table, column in (
            ("cancellation_policy.practice_settings", "practice_id"),
            ("pms_sync.integrations", "practice_id"),
        ):
            await wait_for_row(infra.admin_dsn, f"SELECT true FROM {table} WHERE {column} = $1", ids["practice_id"])
        for booking_id in (ids["booking_id"], pro_booking):
            await wait_for_row(infra.admin_dsn, "SELECT true FROM booking.bookings WHERE booking_id = $1", booking_id)
        for booking_id, actor in (
            (ids["booking_id"], {"kind": "staff", "id": "staff-7", "roles": ["reception"]}),
            (pro_booking, {"kind": "professional", "id": ids["professional_id"]}),
        ):
            await publisher.event(
                UPSTREAM_BOOKINGS,
                "booking.cancellation_requested",
                booking_id,
                {
                    "request_id": unique("request"),
                    "booking_id": booking_id,
                    "requested_at": iso(datetime.now(UTC)),
                    "actor": actor,
                    "channel": "practice" if actor["kind"] == "staff" else "professional_app",
                },
            )
        await w.wait_for(lambda s: s.type == "payment.captured" and s.key == ids["booking_id"], timeout=60)
        await w.wait_for(lambda s: s.type == "notification.sent" and s.key == ids["booking_id"], timeout=60)
        await w.wait_for(lambda s: s.topic == PRAKTIKA and s.key == ids["booking_id"], timeout=60)
        await w.wait_for(lambda s: s.type == "hold.placed" and s.key == ids["professional_id"], timeout=60)
        await publisher.event(
            UPSTREAM_PROFESSIONALS,
            "excuse.submitted",
            ids["professional_id"],
            {
                "excuse_id": ids["excuse_id"],
                "professional_id": ids["professional_id"],
                "booking_id": pro_booking,
                "document_ref": "docs/sick-note.pdf",
                "submitted_at": iso(datetime.now(UTC)),
            },
        )
        await wait_for_row(infra.admin_dsn, "SELECT true FROM scoring.excuses WHERE excuse_id = $1", ids["excuse_id"])
    return ids


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": "someone",
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "practice_ids": [],
        "roles": ["ops"],
        **overrides,
    }


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signed(body: dict[str, Any]) -> str:
    key = Path(os.environ.get("AUTH_PRIVATE_KEY_FILE", ".local/auth/private.pem")).read_bytes()
    return jwt.encode(body, serialization.load_pem_private_key(key, None), algorithm="ES256")  # type: ignore[arg-type]


def _hs256_with_public_key(body: dict[str, Any]) -> str:
    secret = Path(os.environ.get("AUTH_PUBLIC_KEY_FILE", ".local/auth/public.pem")).read_bytes()
    signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def _forged(body: dict[str, Any]) -> str:
    return jwt.encode(body, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")  # another key


UNTRUSTED = {
    "none": None,
    "expired": lambda: _signed(_claims(exp=int(time.time()) - 300)),
    "wrong issuer": lambda: _signed(_claims(iss="https://idp.elsewhere.test")),
    "wrong audience": lambda: _signed(_claims(aud="another-api")),
    "HS256 with the public key": lambda: _hs256_with_public_key(_claims()),
    "alg none": lambda: f"{_b64(json.dumps({'alg': 'none'}).encode())}.{_b64(json.dumps(_claims()).encode())}.",
    "forged": lambda: _forged(_claims()),
}


# Reports over the token's own practices, with no practice to ask for: another practice's owner
# gets 200 and a list without this practice's rows (checked below).
PRACTICE_LISTS = {("scoring", "/reports/standings"), ("scoring", "/reports/office-scores")}


def _kind(service: str, path: str) -> str:
    if path.startswith(("/professionals", "/excuses", "/suspended-professionals")):
        return "ops_only"
    if (service, path) in PRACTICE_LISTS:
        return "practice_list"
    if service == "billing":
        # A patient is nobody's in particular: asked for our practice, another practice's biller
        # gets 404; asked for none, an empty list (checked below).
        return "fee_list" if path.startswith("/patients/") else "fee"
    return "practice"


def _expected(kind: str, token: str) -> int:
    return {
        "other practice": {"practice": 404, "practice_list": 200, "fee": 404, "fee_list": 404, "ops_only": 403},
        "receptionist": {"practice": 200, "practice_list": 200, "fee": 403, "fee_list": 403, "ops_only": 403},
        "manager": {"practice": 200, "practice_list": 200, "fee": 200, "fee_list": 200, "ops_only": 403},
        "ops": {"practice": 200, "practice_list": 200, "fee": 200, "fee_list": 200, "ops_only": 200},
    }[token][kind]


def _url(path: str, operation: dict[str, Any], ids: dict[str, str]) -> str:
    now = datetime.now(UTC)
    query_values = {"from": iso(now - timedelta(days=1)), "to": iso(now + timedelta(days=2))}
    url = path
    for name, value in ids.items():
        url = url.replace("{" + name + "}", quote(value))
    assert "{" not in url, f"no id to fill in {path}"
    query = {"practice_id": ids["practice_id"]}  # a list asked for one practice: the token must cover it
    asked = [
        p["name"]
        for p in operation.get("parameters", [])
        if p["in"] == "query" and (p.get("required") or p["name"] in query)
    ]
    if asked:
        url += "?" + "&".join(f"{name}={quote({**query_values, **query}[name])}" for name in asked)
    return url


# The only routes that are not reads: providers' callbacks, each verified by the provider's
# signature (Twilio's X-Twilio-Signature, Stripe's Stripe-Signature) and tested with it elsewhere.
SIGNED_CALLBACKS = {("notification", "/sms/status"), ("billing", "/stripe/webhook")}


def _post_unsigned(port: int, path: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=b"MessageSid=SM1&MessageStatus=delivered", method="POST"
    )
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def test_every_read_route_answers_only_the_right_people(system, infra, publisher) -> None:
    ids = await _a_marketplace_day(infra, publisher)
    practice = ids["practice_id"]
    tokens = {
        "other practice": dev_token(practice_ids=["another-practice"], roles=["owner"]),
        "receptionist": dev_token(practice_ids=[practice], roles=["receptionist"]),
        "manager": dev_token(practice_ids=[practice], roles=["manager"]),
        "ops": dev_token(roles=["ops"]),
    }
    table: list[tuple[str, str, str, int, int]] = []
    unsigned: list[tuple[str, str, int]] = []
    for service, proc in system.items():
        document = proc.get_json("/openapi.json")
        for path, operations in document["paths"].items():
            if path in OPEN:
                continue
            if "get" not in operations:  # a provider's callback: signed by the provider, never a token
                assert (service, path) in SIGNED_CALLBACKS, f"{service} {path}: a write route no test guards"
                unsigned.append((service, path, _post_unsigned(proc.port, path)))
                continue
            url = _url(path, operations["get"], ids)
            for name, make in UNTRUSTED.items():
                table.append((service, url, name, 401, proc.get_status(url, make() if make else None)))
            for name, token in tokens.items():
                table.append((service, url, name, _expected(_kind(service, path), name), proc.get_status(url, token)))
            if _kind(service, path) == "practice_list":
                answer = proc.get_json(url, tokens["other practice"])
                rows = answer["items"] if isinstance(answer, dict) else answer
                assert all(row.get("practice_id") != practice for row in rows), f"{path}: another practice's rows"
            if _kind(service, path) == "fee_list":
                assert proc.get_json(url.split("?")[0], tokens["other practice"])["charges"] == [], (
                    "another practice's charges"
                )
    assert {(s, p) for s, p, _ in unsigned} <= SIGNED_CALLBACKS and unsigned
    assert all(status in (400, 403) for _, _, status in unsigned), unsigned  # an unsigned callback is refused
    wrong = [row for row in table if row[3] != row[4]]
    assert not wrong, "\n".join(f"{s} GET {u} with {t}: expected {e}, got {g}" for s, u, t, e, g in wrong)
    routes = {(s, u) for s, u, *_ in table}
    assert len(routes) >= 12, sorted(routes)  # every service's read API was asked, not a few routes
    assert {s for s, _ in routes} == set(SERVICE_MODULES)

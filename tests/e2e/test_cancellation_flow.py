"""One cancellation through all six services as separate processes, on the real broker and
database, with a real SMTP server and a local SMS provider: the flow of docs/design.md.

booking.scheduled, then a staff cancellation on upstream.bookings.v1 → booking asks
cancellation-policy → the decision comes back → booking.cancelled → scoring, billing,
notification and pms-sync each record it and publish what the contract says for the case.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from shared.testing import EventWatcher, iso, unique, wait_for_row
from shared.topics import (
    BILLING_EVENTS,
    BOOKING_EVENTS,
    NOTIFICATION_EVENTS,
    PMS_SYNC_ACKS,
    PMS_SYNC_EVENTS,
    POLICY_DECISIONS,
    POLICY_REQUESTS,
    SCORING_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
)

from .stories import ann_booked, harbour_dental

pytestmark = pytest.mark.e2e

PRAKTIKA = "pms-sync.praktika.v1"
WATCHED = [
    POLICY_REQUESTS,
    POLICY_DECISIONS,
    BOOKING_EVENTS,
    SCORING_EVENTS,
    BILLING_EVENTS,
    NOTIFICATION_EVENTS,
    PRAKTIKA,
    PMS_SYNC_EVENTS,
]


async def _rows(dsn: str, query: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def test_a_staff_late_cancellation_reaches_every_service_once(system, infra, publisher, mailbox, sms):
    practice_id, booking_id, patient_id = unique("practice"), unique("booking"), unique("patient")
    email, phone = f"{patient_id}@patients.test", f"+61400{int(patient_id[-6:], 16) % 10**6:06d}"  # E.164
    starts = datetime.now(UTC) + timedelta(hours=6)

    async with EventWatcher(infra.bootstrap, WATCHED) as w:
        await publisher.event(
            UPSTREAM_PRACTICES,
            "practice.configured",
            practice_id,
            harbour_dental(practice_id),
        )
        await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.scheduled",
            booking_id,
            ann_booked(
                booking_id,
                practice_id,
                patient_id,
                starts,
                patient={"email": email, "phone": phone},
                deposit={"amount": "20.00", "currency": "AUD"},
            ),
        )
        # Settings and contacts are in place before the request (topics are consumed independently).
        await wait_for_row(
            infra.admin_dsn,
            "SELECT true FROM cancellation_policy.practice_settings WHERE practice_id = $1",
            practice_id,
        )
        await wait_for_row(
            infra.admin_dsn, "SELECT true FROM pms_sync.integrations WHERE practice_id = $1", practice_id
        )
        await wait_for_row(infra.admin_dsn, "SELECT true FROM booking.bookings WHERE booking_id = $1", booking_id)

        request = await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.cancellation_requested",
            booking_id,
            {
                "request_id": unique("request"),
                "booking_id": booking_id,
                "requested_at": iso(datetime.now(UTC)),
                "actor": {"kind": "staff", "id": "staff-7", "roles": ["reception"]},
                "channel": "practice",
                "reason_code": "illness",
                "reason_text": "Dr Lee is unwell today",
                "chart_note": "Pt notified by phone",
            },
        )
        request_id, correlation = request["data"]["request_id"], request["id"]

        def about(type_: str):
            return lambda s: s.type == type_ and s.value.get("correlationid") == correlation

        decision = (await w.wait_for(about("cancellation.assessed")))[0]
        assert decision.data["classification"] == "late" and decision.data["charge_card"] is True
        assert decision.data["deposit_action"] == "keep"

        cancelled = (await w.wait_for(about("booking.cancelled")))[0]
        assert cancelled.key == booking_id and cancelled.data["request_id"] == request_id
        assert (
            cancelled.data["status_label"] == "Cancelled" and cancelled.data["reason_text"] == "Dr Lee is unwell today"
        )
        assert cancelled.data["decision"]["fee"]["code"] == "D9987"

        charge = (await w.wait_for(about("charge.created")))[0]
        assert (
            charge.data["kind"],
            charge.data["amount"],
            charge.data["currency"],
            charge.data["code"],
            charge.data["code_system"],
        ) == ("late_cancellation", "45.00", "AUD", "D9987", "CDT")
        captured = (await w.wait_for(about("payment.captured")))[0]
        assert captured.data["charge_id"] == charge.data["charge_id"] and captured.data["amount"] == "45.00"
        kept = (await w.wait_for(about("deposit.kept")))[0]
        assert (kept.data["amount"], kept.data["currency"]) == ("20.00", "AUD")

        sync = (await w.wait_for(lambda s: s.topic == PRAKTIKA and s.key == booking_id))[0]
        assert sync.type == "pms.cancel_booking"
        assert (sync.data["classification"], sync.data["reason_text"], sync.data["chart_note"]) == (
            "late",
            "Dr Lee is unwell today",
            "Pt notified by phone",
        )
        assert sync.data["fee"]["amount"] == "45.00"
        await publisher.event(
            PMS_SYNC_ACKS,
            "pms.sync_acknowledged",
            booking_id,
            {"sync_id": sync.data["sync_id"], "booking_id": booking_id, "status": "ok", "external_ref": "PK-1"},
            source="pms/praktika",
        )
        completed = (await w.wait_for(lambda s: s.type == "pms.sync_completed" and s.key == booking_id))[0]
        assert completed.data["sync_id"] == sync.data["sync_id"] and completed.data["integration"] == "praktika"

        # The patient is told by email (the reason quoted) and SMS, for real.
        await w.wait_for(lambda s: s.type == "notification.sent" and s.key == booking_id, count=2)
        message = await _mail_to(mailbox, email)
        body = (
            message.get_payload(decode=True)
            if not message.is_multipart()
            else message.get_payload(0).get_payload(decode=True)
        )
        assert "Dr Lee is unwell today" in body.decode()
        assert sms.to(phone), "no SMS reached the provider"

        # Every effect exactly once, and nothing personal in any event.
        await w.settle(3.0)
        for type_ in (
            "cancellation.assessed",
            "booking.cancelled",
            "charge.created",
            "payment.captured",
            "deposit.kept",
        ):
            assert len(w.matching(about(type_))) == 1, type_
        assert len(w.matching(lambda s: s.topic == PRAKTIKA and s.key == booking_id)) == 1
        assert len(w.matching(lambda s: s.type == "pms.sync_completed" and s.key == booking_id)) == 1
        assert len(w.matching(lambda s: s.type == "notification.sent" and s.key == booking_id)) == 2
        assert len(mailbox.to(email)) == 1 and len(sms.to(phone)) == 1
        for seen in w.matching(
            lambda s: s.key == booking_id and s.topic in (NOTIFICATION_EVENTS, BILLING_EVENTS, PMS_SYNC_EVENTS)
        ):
            assert email not in str(seen.value) and phone not in str(seen.value)

    # Each service recorded it in its own schema.
    assert await _rows(_dsn(infra, "booking"), "SELECT status FROM bookings WHERE booking_id = $1", booking_id) == [
        ("cancelled",)
    ]
    assert await _rows(_dsn(infra, "billing"), "SELECT count(*) FROM charges WHERE booking_id = $1", booking_id) == [
        (1,)
    ]


async def test_a_professional_late_cancellation_costs_score_and_a_hold(system, infra, publisher):
    practice_id, booking_id, professional_id = unique("practice"), unique("booking"), unique("pro")
    starts = datetime.now(UTC) + timedelta(hours=5)
    async with EventWatcher(infra.bootstrap, WATCHED) as w:
        await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.scheduled",
            booking_id,
            {
                "booking_id": booking_id,
                "practice_id": practice_id,
                "starts_at": iso(starts),
                "ends_at": iso(starts + timedelta(hours=8)),
                "practitioner_id": "chair-2",
                "service_code": "HYG-DAY",
                "professional_id": professional_id,
                "patient": {
                    "patient_id": unique("patient"),
                    "first_name": "Office",
                    "portal_account": False,
                    "card_on_file": False,
                },
            },
        )
        await wait_for_row(infra.admin_dsn, "SELECT true FROM booking.bookings WHERE booking_id = $1", booking_id)
        await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.cancellation_requested",
            booking_id,
            {
                "request_id": unique("request"),
                "booking_id": booking_id,
                "requested_at": iso(datetime.now(UTC)),
                "actor": {"kind": "professional", "id": professional_id, "roles": []},
                "channel": "professional_app",
            },
        )
        changed = (await w.wait_for(lambda s: s.type == "score.changed" and s.key == professional_id))[0]
        assert (changed.data["delta"], changed.data["score"], changed.data["cause"]) == (-50, 50, "late_cancelled")
        hold = (await w.wait_for(lambda s: s.type == "hold.placed" and s.key == professional_id))[0]
        held = datetime.fromisoformat(hold.data["ends_at"]) - datetime.fromisoformat(hold.data["starts_at"])
        assert held == timedelta(days=7)
        await w.wait_for(lambda s: s.type == "booking.slot_released" and s.key == booking_id)
        await w.settle(2.0)
        assert not w.matching(lambda s: s.topic == BILLING_EVENTS and s.key == booking_id)  # the patient pays nothing


def _dsn(infra, service: str) -> str:
    from shared.provision import service_dsn

    return service_dsn(infra.admin_dsn, service)


async def _mail_to(mailbox, address: str, timeout: float = 30.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if found := mailbox.to(address):
            return found[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no email for the patient within {timeout}s")

"""Notification's set-based handlers on the real SQL: sets of requests, reschedules,
cancellations (with turn-away pay) and fee events crossing every branch leave exactly the rows
the same records leave one by one, and a set delivered again records nothing new. And the
sender's statements that end or postpone one delivery are served by the primary key however
many deliveries are pending. Each run has a schema of its own, so no running notification
process takes part.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from notification import handlers, notices, repository
from notification.rendering import Renderer
from notification.settings import NotificationSettings
from shared.consumer import Unit
from shared.contracts.base import Payload
from shared.contracts.billing import ChargeCreated, PaymentCaptured, PaymentFailed
from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.envelope import new_envelope, parse_envelope
from shared.contracts.registry import models_for
from shared.contracts.upstream import (
    BookingCancellationRequested,
    BookingRescheduled,
    BookingScheduled,
    PracticeConfigured,
)
from shared.testing import ScratchSchemas
from shared.topics import BILLING_EVENTS, BOOKING_EVENTS, UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "notification" / "migrations"
T = datetime(2031, 3, 10, 22, 0, tzinfo=UTC)
FEE = {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}
TOPICS = {
    PracticeConfigured: UPSTREAM_PRACTICES,
    BookingScheduled: UPSTREAM_BOOKINGS,
    BookingRescheduled: UPSTREAM_BOOKINGS,
    BookingCancellationRequested: UPSTREAM_BOOKINGS,
    BookingCancelled: BOOKING_EVENTS,
    BookingNoShowRecorded: BOOKING_EVENTS,
    ChargeCreated: BILLING_EVENTS,
    PaymentCaptured: BILLING_EVENTS,
    PaymentFailed: BILLING_EVENTS,
}


@dataclass
class Deps:
    """What the handlers reach through `unit.deps`, with the real repository."""

    settings: NotificationSettings
    renderer: Renderer
    repository: Any
    clock: Callable[[], datetime]


DEPS = Deps(NotificationSettings(portal_base_url="https://portal.clinic.test"), Renderer(), repository, lambda: T)


@pytest.fixture
async def scratch(infra: Any) -> AsyncIterator[Callable[[], Any]]:
    """`await scratch()`: a pool on a new schema holding notification's migrations."""
    async with ScratchSchemas(infra.admin_dsn, "notification_sets", MIGRATIONS) as scratch:
        yield scratch.new


async def run(pool: asyncpg.Pool, handler: Any, payloads: list[Payload], *, together: bool, wave: str) -> None:
    """`payloads` as one set in one transaction (as the consumer runs a wave), or one by one;
    the envelope ids are fixed by `wave` and position, so both runs record the same ids."""
    if not together:
        for i, payload in enumerate(payloads):
            await _run(pool, handler, [(f"{wave}-{i}", payload)])
        return
    await _run(pool, handler, [(f"{wave}-{i}", p) for i, p in enumerate(payloads)])


async def _run(pool: asyncpg.Pool, handler: Any, records: list[tuple[str, Payload]]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        units = []
        for event_id, payload in records:
            wire = new_envelope(
                payload, source="test", subject="test", correlation_id=f"c-{event_id}", time=T, event_id=event_id
            )
            event = parse_envelope(json.dumps(wire).encode(), models_for(TOPICS[type(payload)]))
            units.append(
                Unit(conn=conn, service="notification", deps=DEPS, correlation_id=event.correlation_id, event=event)
            )
        if hasattr(handler, "handle_many"):
            await handler.handle_many(units, [u.event.payload for u in units])
        else:
            for unit in units:
                await handler(unit, unit.event.payload)
        assert all(u.emitted == [] for u in units)


async def rows(pool: asyncpg.Pool) -> dict[str, Any]:
    """The tables as the handlers left them, without the database's clock."""
    async with pool.acquire() as conn:
        tables = {
            "deliveries": await conn.fetch(
                "SELECT notification_id, event_id, event_type, correlation_id, booking_id, practice_id,"
                " professional_id, recipient, channel, template, locale, address, subject, body, status, reason,"
                " attempts, finished_at IS NULL AS unfinished FROM deliveries ORDER BY notification_id"
            ),
            "fees": await conn.fetch(
                "SELECT booking_id, practice_id, starts_at, charge_card, charge_id, amount, currency, code,"
                " code_system, payment FROM no_show_fees ORDER BY 1"
            ),
            "in_review": await conn.fetch("SELECT * FROM late_fees_in_review ORDER BY 1"),
            "requests": await conn.fetch("SELECT * FROM cancellation_requests ORDER BY 1"),
            "starts": await conn.fetch("SELECT booking_id, starts_at FROM patients ORDER BY 1"),
        }
    return {name: [dict(r) for r in found] for name, found in tables.items()}


# --- the events ----------------------------------------------------------------------------------


def configured(practice_id: str, locale: str = "en") -> PracticeConfigured:
    return PracticeConfigured.new(
        practice_id=practice_id,
        name="Harbour Dental",
        timezone="Australia/Sydney",
        locale=locale,
        contact={"email": "desk@clinic.test", "phone": "+61290000000", "preferred_channel": "email"},
        cancellation={"notify_practice_on_online_cancel": True},
    )


def scheduled(booking_id: str, practice_id: str = "prac-1") -> BookingScheduled:
    return BookingScheduled.new(
        booking_id=booking_id,
        practice_id=practice_id,
        starts_at=T,
        ends_at=T + timedelta(minutes=30),
        practitioner_id="dr-lee",
        service_code="D1110",
        patient={
            "patient_id": f"pat-{booking_id}",
            "first_name": "Ada",
            "email": "ada@example.test",
            "phone": "+61400000001",
            "portal_account": True,
            "card_on_file": True,
        },
        professional_id="pro-1",
        professional_contact={"first_name": "Grace", "email": "grace@example.test"},
    )


def requested(booking_id: str, kind: str) -> BookingCancellationRequested:
    return BookingCancellationRequested.new(
        request_id=f"req-{booking_id}",
        booking_id=booking_id,
        requested_at=T - timedelta(hours=2),
        actor={"kind": kind, "id": "someone"},
        channel="patient_portal" if kind == "patient" else "practice",
    )


def moved(booking_id: str) -> BookingRescheduled:
    return BookingRescheduled.new(
        booking_id=booking_id, starts_at=T + timedelta(days=1), ends_at=T + timedelta(days=1, minutes=30)
    )


def cancelled(booking_id: str, actor: str, practice_id: str = "prac-1", **decision: Any) -> BookingCancelled:
    return BookingCancelled.new(
        booking_id=booking_id,
        request_id=f"req-{booking_id}",
        practice_id=practice_id,
        patient_id=f"pat-{booking_id}",
        practitioner_id="dr-lee",
        professional_id="pro-1",
        service_code="D1110",
        starts_at=T,
        ends_at=T + timedelta(minutes=30),
        cancelled_at=T - timedelta(days=1),
        actor={"kind": actor, "id": f"{actor}-7", "roles": []},
        channel="patient_portal" if actor == "patient" else "practice",
        status_label="Cancelled",
        classification="late",
        decision={
            "allowed": True,
            "classification": "late",
            "charge_card": False,
            "deposit_action": "none",
            "policy_version": "r1.s1",
            **decision,
        },
    )


def no_show(booking_id: str, *, charge_card: bool, party: str = "patient") -> BookingNoShowRecorded:
    return BookingNoShowRecorded.new(
        booking_id=booking_id,
        request_id=f"req-ns-{booking_id}",
        practice_id="prac-1",
        patient_id=f"pat-{booking_id}",
        party=party,
        code="DNA",
        starts_at=T,
        recorded_at=T + timedelta(minutes=20),
        decision={
            "allowed": True,
            "classification": "no_show",
            "charge_card": charge_card,
            "deposit_action": "none",
            "policy_version": "r1.s1",
            "fee": FEE,
        },
    )


def charge(booking_id: str, charge_id: str, kind: str = "no_show", status: str | None = None) -> ChargeCreated:
    return ChargeCreated.new(
        charge_id=charge_id,
        booking_id=booking_id,
        patient_id=f"pat-{booking_id}",
        kind=kind,
        amount=Decimal("45.00"),
        currency="AUD",
        code="D9987",
        code_system="CDT",
        status=status,
        review_until=T if status == "pending_review" else None,
    )


def paid(outcome: Any, booking_id: str, charge_id: str) -> Payload:
    return outcome.new(charge_id=charge_id, booking_id=booking_id, amount=Decimal("45.00"), currency="AUD")


BOOKINGS = ["bk-0", "bk-1", "bk-2", "bk-3", "bk-4", "bk-5", "bk-6"]

# Waves of sets as the consumer would hand them (one record per booking in each), every branch.
WAVES: list[tuple[Any, list[Payload]]] = [
    (handlers.remember_request, [requested("bk-0", "patient"), requested("bk-1", "staff"), requested("bk-2", "staff")]),
    (handlers.reschedule_booking, [moved("bk-1"), moved("bk-never")]),
    (
        notices.notify_cancellation,
        [
            cancelled("bk-0", "patient"),
            cancelled("bk-1", "staff", fee=FEE, turnaway_pay={"amount": "90.00", "currency": "AUD"}),
            cancelled("bk-2", "staff", fee=FEE, review_hours=48),
            cancelled("bk-unknown", "professional", practice_id="prac-unknown"),
            cancelled("bk-6", "system", practice_id="prac-2"),
        ],
    ),
    (
        handlers.note_no_show,
        [
            no_show("bk-3", charge_card=True),
            no_show("bk-4", charge_card=False),
            no_show("bk-5", charge_card=False, party="professional"),
        ],
    ),
    (handlers.note_charge, [charge("bk-2", "ch-l2", "late_cancellation", "pending_review")]),
    (
        handlers.note_charge,
        [
            charge("bk-2", "ch-l2", "late_cancellation", "due"),  # final after review: told now
            charge("bk-1", "ch-l1", "late_cancellation", "due"),  # never in review: told with the cancellation
            charge("bk-3", "ch-3"),
            charge("bk-4", "ch-4"),  # not for the card: told now
            charge("bk-6", "ch-6", status="pending_review"),
        ],
    ),
    (handlers.note_charge, [charge("bk-4", "ch-other")]),  # a second no-show charge: never told
    (
        handlers.note_payment,
        [paid(PaymentCaptured, "bk-3", "ch-3"), paid(PaymentFailed, "bk-4", "ch-4"), paid(PaymentFailed, "bk-9", "x")],
    ),
]


async def test_sets_on_the_real_sql_leave_the_rows_the_records_leave_one_by_one(scratch: Any) -> None:
    results = []
    for together in (True, False):
        pool = await scratch()
        await run(pool, handlers.configure_practice, [configured("prac-1")], together=False, wave="p1")
        await run(pool, handlers.configure_practice, [configured("prac-2", "de")], together=False, wave="p2")
        await run(pool, handlers.remember_patient, [scheduled(b) for b in BOOKINGS], together=False, wave="s")
        for n, (handler, payloads) in enumerate(WAVES):
            await run(pool, handler, payloads, together=together, wave=f"w{n}")
        before = await rows(pool)
        for n, (handler, payloads) in enumerate(WAVES):  # every set delivered again, under its ids
            await run(pool, handler, payloads, together=together, wave=f"w{n}")
        assert await rows(pool) == before  # recorded once
        results.append(before)
    together_rows, alone_rows = results
    assert together_rows == alone_rows

    told = sorted((d["booking_id"], d["recipient"], d["template"], d["channel"]) for d in together_rows["deliveries"])
    assert ("bk-1", "professional", "turnaway_pay_owed", "email") in told
    assert ("bk-2", "patient", "late_cancellation_fee", "email") in told
    assert ("bk-1", "patient", "late_cancellation_fee", "email") not in told
    fee_mails = [(b, t) for b, _, t, _ in told if t == "no_show_fee_charged"]
    assert fee_mails == [("bk-3", "no_show_fee_charged"), ("bk-4", "no_show_fee_charged")]
    assert {d["status"] for d in together_rows["deliveries"] if d["booking_id"] == "bk-unknown"} == {"skipped"}
    assert {f["booking_id"]: (f["charge_id"], f["payment"]) for f in together_rows["fees"]} == {
        "bk-3": ("ch-3", "captured"),
        "bk-4": ("ch-4", "failed"),
    }
    assert [(r["charge_id"], r["final_at"] is not None) for r in together_rows["in_review"]] == [("ch-l2", True)]
    assert [r["request_id"] for r in together_rows["requests"]] == ["req-bk-0", "req-bk-1", "req-bk-2"]
    assert {r["booking_id"]: r["starts_at"] for r in together_rows["starts"]}["bk-1"] == T + timedelta(days=1)


class Recording:
    """A connection that keeps the statements a repository function runs, to explain them."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.conn.fetchval(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.conn.fetch(sql, *args)


def _indexes(plan: Any) -> set[str]:
    found = {plan["Index Name"]} if "Index Name" in plan else set()
    for child in plan.get("Plans", []):
        found |= _indexes(child)
    return found


async def test_the_sender_marks_a_delivery_through_its_primary_key_however_many_are_pending(scratch: Any) -> None:
    """The statistics of the due index are taken when it is nearly empty (every delivery sent);
    during a burst thousands are pending. Marking one must not scan them all."""
    pool = await scratch()
    async with pool.acquire() as conn:
        insert = (
            "INSERT INTO deliveries (notification_id, event_id, event_type, recipient, channel, template, locale,"
            " address, subject, body, status, finished_at)"
            " SELECT gen_random_uuid(), 'e', 't', 'patient', 'email', 'x', 'en', 'a@b.test', 's', repeat('b', 600),"
            " $1, CASE WHEN $1 = 'pending' THEN NULL ELSE now() END FROM generate_series(1, $2)"
        )
        await conn.execute(insert, "sent", 3000)
        await conn.execute("ANALYZE deliveries")  # as autovacuum leaves it between bursts: nothing pending
        await conn.execute(insert, "pending", 2000)
        one = await conn.fetchval("SELECT notification_id FROM deliveries WHERE status = 'pending' LIMIT 1")
        async with conn.transaction():
            recording = Recording(conn)
            assert await repository.mark_sent(recording, one, None)  # type: ignore[arg-type]
            assert not await repository.mark_failed(recording, one, 0, "no")  # type: ignore[arg-type]
            assert not await repository.schedule_retry(recording, one, 0, 1.0, "later")  # type: ignore[arg-type]
            claimed = await repository.claim_due(recording, 10, 60.0)  # type: ignore[arg-type]
            assert len(claimed) == 10
            for mode in ("force_custom_plan", "force_generic_plan"):
                await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
                *marks, claim = recording.statements
                for sql, args in marks:
                    plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))[0]["Plan"]
                    assert _indexes(plan) == {"deliveries_pkey"}, (mode, sql, plan)
                plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {claim[0]}", *claim[1]))[0]["Plan"]
                assert "deliveries_unfinished" in _indexes(plan), (mode, plan)

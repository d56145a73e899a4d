"""pms-sync's set-based handlers on the real SQL: a set of cancellations, requests and charge
events crossing every branch (sent, waiting for its request, a series, manual, none, a replay,
a request or a charge named twice, fee updates superseding older ones) leaves exactly the rows
and publishes exactly the events that the same records leave one by one. Each run has a schema
of its own, so no running pms-sync process takes part.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pms_sync import domain, fees, handlers, repository
from pms_sync.handlers import PmsSyncDeps
from pms_sync.settings import PmsSyncSettings
from shared.consumer import Unit
from shared.contracts.base import Payload
from shared.contracts.billing import ChargeAdjusted, ChargeCreated, ChargeWaived
from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.envelope import new_envelope, parse_envelope
from shared.contracts.registry import models_for
from shared.contracts.upstream import (
    BookingCancellationRequested,
    BookingNoShowReported,
    PmsSyncAcknowledged,
    PracticeConfigured,
)
from shared.testing import ScratchSchemas
from shared.topics import BILLING_EVENTS, BOOKING_EVENTS, PMS_SYNC_ACKS, UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "pms-sync" / "migrations"
SETTINGS = PmsSyncSettings(pms_ack_timeout_seconds=60.0, pms_request_wait_seconds=30.0)
T = datetime(2031, 3, 10, 22, 0, tzinfo=UTC)
STAFF = {"kind": "staff", "id": "staff-7", "roles": ["reception"]}
SYSTEM = {"kind": "system", "id": "service/booking", "roles": []}
FEE = {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}
LOWER = {"amount": "30.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}
TOPICS = {
    PracticeConfigured: UPSTREAM_PRACTICES,
    BookingCancellationRequested: UPSTREAM_BOOKINGS,
    BookingNoShowReported: UPSTREAM_BOOKINGS,
    BookingCancelled: BOOKING_EVENTS,
    BookingNoShowRecorded: BOOKING_EVENTS,
    ChargeCreated: BILLING_EVENTS,
    ChargeAdjusted: BILLING_EVENTS,
    ChargeWaived: BILLING_EVENTS,
    PmsSyncAcknowledged: PMS_SYNC_ACKS,
}
Published = list[list[tuple[str, str, str, dict[str, Any]]]]


@pytest.fixture
async def scratch(infra: Any) -> AsyncIterator[Callable[[], Any]]:
    """`await scratch()`: a pool on a new schema holding pms-sync's migrations."""
    async with ScratchSchemas(infra.admin_dsn, "pms_sync_sets", MIGRATIONS) as scratch:
        yield scratch.new


async def run(
    pool: asyncpg.Pool, handler: Any, payloads: list[Payload], *, together: bool, first: int = 0
) -> Published:
    """`payloads` as one set in one transaction (as the consumer runs a wave), or one by one."""
    if not together:
        return [(await run(pool, handler, [p], together=True, first=first + i))[0] for i, p in enumerate(payloads)]
    async with pool.acquire() as conn, conn.transaction():
        units = []
        for i, payload in enumerate(payloads, start=first):
            wire = new_envelope(payload, source="test", subject="test", correlation_id=f"c-{i}")
            event = parse_envelope(json.dumps(wire).encode(), models_for(TOPICS[type(payload)]))
            units.append(
                Unit(
                    conn=conn,
                    service="pms-sync",
                    deps=PmsSyncDeps(settings=SETTINGS, repository=repository),
                    correlation_id=event.correlation_id,
                    event=event,
                )
            )
        if hasattr(handler, "handle_many"):
            await handler.handle_many(units, [u.event.payload for u in units])
        else:
            for unit in units:
                await handler(unit, unit.event.payload)
    return [[(e.topic, e.key, e.envelope["type"], e.envelope["data"]) for e in u.emitted] for u in units]


async def rows(pool: asyncpg.Pool) -> dict[str, Any]:
    """The tables as the handlers left them, without the database's clock and serials."""
    async with pool.acquire() as conn:
        syncs = await conn.fetch(
            "SELECT sync_id, booking_id, practice_id, request_id, integration, action, topic, command,"
            " correlation_id, status, attempts, next_retry_at IS NULL AS settled FROM syncs ORDER BY sync_id"
        )
        manual = await conn.fetch(
            "SELECT booking_id, practice_id, integration, action, message, sync_id FROM manual_updates ORDER BY id"
        )
        requests = await conn.fetch("SELECT request_id, booking_id, kind, actor, chart_note FROM requests ORDER BY 1")
        charges = await conn.fetch("SELECT charge_id, booking_id, state, fee FROM charges ORDER BY 1")
    return {
        "syncs": [dict(r) for r in syncs],
        "manual": [dict(r) for r in manual],
        "requests": [dict(r) for r in requests],
        "charges": [dict(r) for r in charges],
    }


def configured(practice_id: str, integration: str) -> PracticeConfigured:
    return PracticeConfigured.new(
        practice_id=practice_id,
        name="Harbour Dental",
        timezone="Australia/Sydney",
        locale="en",
        pms={"integration": integration},
    )


def requested(booking_id: str, request_id: str) -> BookingCancellationRequested:
    return BookingCancellationRequested.new(
        request_id=request_id,
        booking_id=booking_id,
        requested_at=T - timedelta(hours=5),
        actor=STAFF,
        channel="practice",
        reason_code="illness",
        chart_note=f"chart note of {booking_id}",
    )


def cancelled(booking_id: str, request_id: str, practice_id: str, **overrides: Any) -> BookingCancelled:
    fields: dict[str, Any] = {
        "booking_id": booking_id,
        "request_id": request_id,
        "practice_id": practice_id,
        "patient_id": "pat-1",
        "practitioner_id": "dr-lee",
        "service_code": "D1110",
        "starts_at": T,
        "ends_at": T + timedelta(minutes=30),
        "cancelled_at": T - timedelta(hours=5),
        "actor": STAFF,
        "channel": "practice",
        "status_label": "Cancelled",
        "reason_code": "illness",
        "classification": "late",
        "decision": {
            "allowed": True,
            "classification": "late",
            "charge_card": False,
            "deposit_action": "none",
            "policy_version": "r1.s1",
            "fee": FEE,
        },
    }
    return BookingCancelled.new(**(fields | overrides))


def charge_created(charge_id: str, booking_id: str, status: str) -> ChargeCreated:
    return ChargeCreated.new(
        charge_id=charge_id, booking_id=booking_id, patient_id="pat-1", kind="late_cancellation", status=status, **FEE
    )


async def story(pool: asyncpg.Pool, *, together: bool) -> tuple[Published, dict[str, Any]]:
    """Every branch, in sets (or one by one): what was published, and the rows left."""
    published: Published = []
    for practice_id, integration in [
        ("p-prk", "praktika"),
        ("p-core", "core_practice"),
        ("p-man", "manual"),
        ("p-none", "none"),
    ]:
        await run(pool, handlers.configure_practice, [configured(practice_id, integration)], together=True, first=-1)
    # the requests read before their cancellations, one of them twice (two records)
    published += await run(
        pool,
        handlers.remember_cancellation_request,
        [requested("b-1", "r-1"), requested("b-2", "r-2"), requested("b-1", "r-1")],
        together=together,
    )
    system = {"actor": SYSTEM, "channel": "system"}
    published += await run(
        pool,
        handlers.sync_cancellation,
        [
            cancelled("b-1", "r-1", "p-prk"),  # sent with its chart note
            cancelled("b-2", "r-2", "p-core", series_booking_ids=["b-2b", "b-2c"]),  # a series, sent
            cancelled("b-3", "r-3", "p-prk", series_booking_ids=["b-3b"]),  # its request not read: waits
            cancelled("b-4", "r-4", "p-man", series_booking_ids=["b-4b"]),  # by hand, each
            cancelled("b-5", "r-5", "p-none"),
            cancelled("b-6", "r-6", "p-never-configured"),
            cancelled(
                "b-7",
                "r-7",
                "p-prk",
                decision={**cancelled("x", "x", "x").decision.to_json_dict(), "review_hours": 24},
                **system,
            ),
        ],
        together=together,
    )
    # a replay of the set's first, and the request the series waits for
    published += await run(
        pool, handlers.sync_cancellation, [cancelled("b-1", "r-1", "p-prk")], together=together, first=100
    )
    published += await run(
        pool,
        handlers.remember_cancellation_request,
        [requested("b-3", "r-3"), requested("b-9", "r-9")],
        together=together,
        first=200,
    )
    # fees: b-7's in review, approved (told), then adjusted twice in one set and waived with another charge
    published += await run(
        pool,
        fees.note_charge_created,
        [
            charge_created("ch-7", "b-7", "pending_review"),
            charge_created("ch-1", "b-1", "due"),
            charge_created("ch-4", "b-4", "due"),
        ],
        together=together,
        first=300,
    )
    published += await run(
        pool, fees.note_charge_created, [charge_created("ch-7", "b-7", "due")], together=together, first=400
    )
    published += await run(
        pool,
        fees.note_charge_adjusted,
        [
            ChargeAdjusted.new(charge_id="ch-7", request_id="adj-1", before=FEE, after=LOWER),
            ChargeAdjusted.new(charge_id="ch-1", request_id="adj-2", before=FEE, after=LOWER),
            ChargeAdjusted.new(charge_id="ch-4", request_id="adj-3", before=FEE, after=LOWER),  # never synced
            ChargeAdjusted.new(charge_id="ch-unknown", request_id="adj-4", before=FEE, after=LOWER),
            ChargeAdjusted.new(charge_id="ch-7", request_id="adj-5", before=LOWER, after=FEE),  # the same charge again
        ],
        together=together,
        first=500,
    )
    published += await run(
        pool,
        fees.note_charge_waived,
        [
            ChargeWaived.new(charge_id="ch-1", booking_id="b-1", request_id="w-1"),
            ChargeWaived.new(charge_id="ch-1b", booking_id="b-1", request_id="w-2"),  # another charge of b-1
        ],
        together=together,
        first=600,
    )
    # the connectors' acks: ok, an error, a fee update's error, one never sent, one sync twice
    b7_fee = domain.fee_update_sync_id("b-7", "ch-7", "adj-5")
    published += await run(
        pool,
        handlers.acknowledge_sync,
        [
            PmsSyncAcknowledged.new(
                sync_id=domain.sync_id("b-1", "r-1"), booking_id="b-1", status="ok", external_ref="PK-1"
            ),
            PmsSyncAcknowledged.new(
                sync_id=domain.sync_id("b-2", "r-2"), booking_id="b-2", status="error", error="locked"
            ),
            PmsSyncAcknowledged.new(sync_id=b7_fee, booking_id="b-7", status="error"),
            PmsSyncAcknowledged.new(sync_id="never-sent", booking_id="b-x", status="ok"),
            PmsSyncAcknowledged.new(sync_id=domain.sync_id("b-2", "r-2"), booking_id="b-2", status="ok"),
        ],
        together=together,
        first=700,
    )
    return published, await rows(pool)


async def test_sets_on_the_real_sql_leave_what_the_records_leave_one_by_one(scratch: Callable[[], Any]) -> None:
    together, alone = await scratch(), await scratch()
    published, left = await story(together, together=True)
    assert (published, left) == await story(alone, together=False)

    kinds = [[(key, type_) for _, key, type_, _ in p] for p in published]
    assert kinds[3] == [("b-1", "pms.cancel_booking")]
    assert kinds[4] == [("b-2", "pms.cancel_booking"), ("b-2b", "pms.cancel_booking"), ("b-2c", "pms.cancel_booking")]
    assert kinds[5] == []  # b-3 waits for its request
    assert kinds[6] == [("b-4", "pms.manual_update_required"), ("b-4b", "pms.manual_update_required")]
    assert kinds[10] == []  # the replay
    assert kinds[11] == [("b-3", "pms.cancel_booking"), ("b-3b", "pms.cancel_booking")]
    assert published[11][0][3]["chart_note"] == "chart note of b-3"
    assert kinds[16] == [("b-7", "pms.update_fee")]  # approved: final now
    # adjusted: ch-7 twice (both told), ch-1 told, ch-4 of a manual practice and an unknown charge not
    assert [len(p) for p in published[17:22]] == [1, 1, 0, 0, 1]
    assert [len(p) for p in published[22:24]] == [1, 1]  # both waivers of b-1 told
    fee_updates = {
        (s["booking_id"], json.loads(s["command"])["charge_id"], s["request_id"]): s["status"]
        for s in left["syncs"]
        if s["action"] == "update_fee"
    }
    # each newer fee update of a booking superseded the older (b-7's last one failed by its ack)
    assert fee_updates == {
        ("b-7", "ch-7", "ch-7"): "superseded",  # approved: final
        ("b-7", "ch-7", "adj-1"): "superseded",
        ("b-7", "ch-7", "adj-5"): "failed",
        ("b-1", "ch-1", "adj-2"): "superseded",
        ("b-1", "ch-1", "w-1"): "superseded",
        ("b-1", "ch-1b", "w-2"): "sent",
    }
    # every command went out (none left waiting); b-1's and b-2's were acknowledged below
    assert {
        s["status"] for s in left["syncs"] if s["action"] != "update_fee" and s["booking_id"] not in ("b-1", "b-2")
    } == {"sent"}
    assert [r["request_id"] for r in left["requests"]] == ["r-1", "r-2", "r-3", "r-9"]
    acks = [[type_ for _, _, type_, _ in p] for p in published[24:29]]
    assert acks == [
        ["pms.sync_completed"],
        ["pms.sync_failed", "pms.manual_update_required"],
        ["pms.sync_failed"],  # a fee update: staff find it in the manual updates, no event names it
        [],
        [],  # the same sync again: it failed already
    ]
    status = {s["sync_id"]: s["status"] for s in left["syncs"]}
    assert (status[domain.sync_id("b-1", "r-1")], status[domain.sync_id("b-2", "r-2")]) == ("completed", "failed")
    assert [(m["booking_id"], m["action"]) for m in left["manual"]] == [
        ("b-4", "cancel_booking"),
        ("b-4b", "cancel_booking"),
        ("b-2", "cancel_booking"),
        ("b-7", "update_fee"),
    ]

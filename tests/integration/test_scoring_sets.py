"""scoring's booking.events.v1 handlers taking a set of records at once (issue 18), on the real
Postgres: one statement of each kind per set whatever its size, two records of one patient, one
office or one professional in a set coming out as one after the other would, and the same set
delivered again changing nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from scoring import accountability, domain, repository
from scoring.handlers import ScoringDeps
from shared.consumer import Unit
from shared.contracts.base import Payload
from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.common import Actor, Decision
from shared.contracts.envelope import new_envelope, parse_envelope
from shared.contracts.registry import models_for
from shared.testing import ScratchSchemas, unique
from shared.topics import BOOKING_EVENTS

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "scoring" / "migrations"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
D = timedelta(days=1)


@pytest.fixture
async def scratch_pool(infra: Any) -> AsyncIterator[asyncpg.Pool]:
    """The scoring migrations in a schema of its own, so no running scoring process sees the rows."""
    async with ScratchSchemas(infra.admin_dsn, "scoring_sets", MIGRATIONS, max_size=10) as scratch:
        yield await scratch.new()


class CountingConnection:
    """The transaction's connection, counting the statements the handlers send through it."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.statements = conn, 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.conn, name)
        if name not in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
            return attribute

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.statements += 1
            return await attribute(*args, **kwargs)

        return counted


async def run_set(pool: asyncpg.Pool, handler: Any, payloads: list[Payload]) -> tuple[list[list[Any]], int]:
    """`payloads` handled as one set in one transaction: what each record emitted as
    (type, key, data), and how many statements the set cost."""
    async with pool.acquire() as raw, raw.transaction():
        conn = CountingConnection(raw)
        units = []
        for payload in payloads:
            subject = payload.booking_id  # type: ignore[attr-defined]
            wire = new_envelope(payload, source="service/booking", subject=subject, correlation_id=None)
            event = parse_envelope(json.dumps(wire).encode(), models_for(BOOKING_EVENTS))
            deps = ScoringDeps(repository=repository)
            units.append(
                Unit(conn=conn, service="scoring", deps=deps, correlation_id=event.correlation_id, event=event)
            )  # type: ignore[arg-type]
        await handler.handle_many(units, [u.event.payload for u in units])
    emitted = [[(e.envelope["type"], e.key, e.envelope["data"]) for e in u.emitted] for u in units]
    return emitted, conn.statements


def decision(classification: str, **extra: Any) -> Decision:
    return Decision.new(
        allowed=True,
        classification=classification,
        charge_card=False,
        deposit_action="none",
        policy_version="r1.s1",
        **extra,
    )


def cancelled(
    practice_id: str,
    patient_id: str,
    at: datetime,
    *,
    actor: str = "patient",
    professional_id: str | None = None,
    classification: str = "late",
    **decided: Any,
) -> BookingCancelled:
    return BookingCancelled.new(
        booking_id=unique("bk"),
        request_id=unique("req"),
        practice_id=practice_id,
        patient_id=patient_id,
        professional_id=professional_id,
        practitioner_id="dr-1",
        service_code="D1110",
        starts_at=at + timedelta(hours=5),
        ends_at=at + timedelta(hours=6),
        cancelled_at=at,
        actor=Actor.new(kind=actor, id=professional_id if actor == "professional" else unique(actor)),
        channel={"professional": "professional_app", "staff": "practice", "patient": "patient_portal"}[actor],
        status_label="Cancelled",
        classification=classification,
        decision=decision(classification, **decided),
    )


def no_show(practice_id: str, patient_id: str, at: datetime) -> BookingNoShowRecorded:
    return BookingNoShowRecorded.new(
        booking_id=unique("bk"),
        request_id=unique("req"),
        practice_id=practice_id,
        patient_id=patient_id,
        party="patient",
        code="FTA",
        starts_at=at - timedelta(minutes=20),
        recorded_at=at,
        decision=decision("no_show"),
    )


def mix(practice_id: str, at: datetime) -> tuple[str, str, list[BookingCancelled]]:
    """Every branch of booking.cancelled: one patient three times (twice by themself, once by
    staff who cancelled a booked professional), the office charged twice, one professional
    cancelling three bookings (holds that stack, then a suspension), a timely one."""
    patient, professional = unique("pat"), unique("pro")
    office = {"office_score_delta": -50, "office_cause": "late_cancelled_professional"}
    pro = {"actor": "professional", "professional_id": professional, "score_delta": -50, "hold_days": 7}
    return (
        patient,
        professional,
        [
            cancelled(practice_id, patient, at),
            cancelled(practice_id, patient, at + timedelta(hours=1)),
            cancelled(practice_id, patient, at + 2 * D, actor="staff", professional_id="pro-s", **office),
            cancelled(practice_id, unique("pat"), at + 3 * D, actor="staff", professional_id="pro-s", **office),
            cancelled(practice_id, unique("pat"), at, **pro),
            cancelled(practice_id, unique("pat"), at + D, **pro),
            cancelled(practice_id, unique("pat"), at + 2 * D, **pro),
            cancelled(practice_id, unique("pat"), at, classification="timely"),
        ],
    )


async def test_a_set_costs_one_statement_of_each_kind_and_reads_as_one_record_after_the_other(
    scratch_pool: asyncpg.Pool,
) -> None:
    practice_id = unique("practice")
    async with scratch_pool.acquire() as conn:
        rules = domain.StandingRules(enabled=True, forgive_first=False)
        await repository.set_standing_rules(conn, practice_id, rules, configured_at=T0)
    patient, professional, events = mix(practice_id, T0)

    emitted, statements = await run_set(scratch_pool, accountability.on_cancelled, events)

    assert [[t for t, _, _ in e] for e in emitted] == [
        [],
        ["patient.standing_changed"],
        ["office.score_changed", "patient.standing_changed"],
        ["office.score_changed"],
        ["score.changed", "hold.placed"],
        ["score.changed", "hold.placed"],
        ["score.changed", "hold.placed", "account.suspended"],
        [],
    ]
    moves = [(k, d["standing"], d["previous"], d["count"]) for e in emitted for t, k, d in e if t.startswith("patient")]
    assert moves == [
        (patient, "deposit_required", "good", 2),
        (patient, "prepayment_required", "deposit_required", 3),
    ]
    assert [(k, d["score"]) for e in emitted for t, k, d in e if t == "office.score_changed"] == [
        (practice_id, 50),
        (practice_id, 0),
    ]
    assert [(k, d["score"]) for e in emitted for t, k, d in e if t == "score.changed"] == [
        (professional, 50),
        (professional, 0),
        (professional, -50),
    ]
    placed = [(d["starts_at"], d["ends_at"]) for e in emitted for t, _, d in e if t == "hold.placed"]
    assert placed == [
        ("2026-03-02T09:00:00Z", "2026-03-09T09:00:00Z"),
        ("2026-03-09T09:00:00Z", "2026-03-16T09:00:00Z"),
        ("2026-03-16T09:00:00Z", "2026-03-23T09:00:00Z"),
    ]
    [suspended] = [d for e in emitted for t, _, d in e if t == "account.suspended"]
    assert suspended["holds"] == [domain.hold_id(professional, e.booking_id) for e in events[4:7]]
    # One statement of each kind: 6 for the professionals, 3 for the office, 5 for the standings.
    assert statements == 14

    standing = await scratch_pool.fetchrow(
        "SELECT standing, count, changed_at FROM patient_standings WHERE practice_id = $1 AND patient_id = $2",
        practice_id,
        patient,
    )
    assert tuple(standing) == ("prepayment_required", 3, T0 + 2 * D)
    row = await scratch_pool.fetchrow(
        "SELECT suspended_at, suspension_holds FROM professionals WHERE professional_id = $1", professional
    )
    assert (row["suspended_at"], row["suspension_holds"]) == (T0 + 2 * D, suspended["holds"])

    # Twice the records cost the same statements; and the first set again (new envelope ids,
    # a redelivery) changes nothing and announces nothing.
    _, _, more = mix(practice_id, T0 + 30 * D)
    _, _, others = mix(practice_id, T0 + 60 * D)
    assert (await run_set(scratch_pool, accountability.on_cancelled, more + others))[1] == 14
    again, _ = await run_set(scratch_pool, accountability.on_cancelled, events)
    assert again == [[]] * len(events)
    assert await scratch_pool.fetchval("SELECT count(*) FROM patient_cases WHERE patient_id = $1", patient) == 3
    assert await scratch_pool.fetchval("SELECT count(*) FROM holds WHERE professional_id = $1", professional) == 3


async def test_no_shows_of_one_patient_in_one_set_and_one_alone_move_the_standing_the_same(
    scratch_pool: asyncpg.Pool,
) -> None:
    practice_id = unique("practice")
    async with scratch_pool.acquire() as conn:
        rules = domain.StandingRules(enabled=True, forgive_first=True, window_days=30)
        await repository.set_standing_rules(conn, practice_id, rules, configured_at=T0)
    together, alone = unique("pat"), unique("pat")
    times = [T0 + 2 * D, T0, T0 + D, T0 + 3 * D]  # out of time order, as partitions may deliver them

    in_a_set, statements = await run_set(
        scratch_pool, accountability.on_no_show, [no_show(practice_id, together, at) for at in times]
    )
    one_by_one = [
        (await run_set(scratch_pool, accountability.on_no_show, [no_show(practice_id, alone, at)]))[0][0]
        for at in times
    ]

    def moves(emitted: list[Any]) -> list[Any]:
        return [[(d["standing"], d["previous"], d["count"], d["reason"]) for _, _, d in e] for e in emitted]

    assert moves(in_a_set) == moves(one_by_one)
    assert [[d["standing"] for _, _, d in e] for e in in_a_set] == [[], [], [], ["prepayment_required"]]
    assert statements == 5
    rows = await scratch_pool.fetch(
        "SELECT patient_id, standing, count, changed_at, next_review_at FROM patient_standings"
        " WHERE practice_id = $1 ORDER BY patient_id = $2",
        practice_id,
        together,
    )
    assert [tuple(r)[1:] for r in rows] == [tuple(rows[0])[1:]] * 2
    assert tuple(rows[1])[1:] == ("prepayment_required", 3, T0 + 3 * D, T0 + 30 * D)

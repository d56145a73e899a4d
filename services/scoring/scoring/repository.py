"""Every SQL statement of the scoring service, nothing else."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import asyncpg

from shared.db import columns

from .domain import PENALTY_CAUSES, Entry, Hold, StandingRules

HOLD_COLUMNS = (
    "hold_id::text AS hold_id, professional_id, booking_id, cause, occurred_at, starts_at, ends_at,"
    " status, lift_cause, lifted_at, excused_at, excuse_id, cleared_at"
)
EXCUSE_COLUMNS = (
    "excuse_id, professional_id, booking_id, document_ref, submitted_at, status, reason, message,"
    " decision, reviewer_id, reviewed_at, recorded_at, updated_at"
)


async def add_ledger_entry(
    conn: asyncpg.Connection,
    *,
    entry_id: str,
    professional_id: str,
    booking_id: str | None,
    delta: int,
    cause: str,
    occurred_at: datetime,
    event_id: str,
) -> bool:
    """Append one entry; False when that entry exists already (the same effect, delivered again)."""
    inserted = await conn.fetchval(
        "INSERT INTO score_ledger (entry_id, professional_id, booking_id, delta, cause, occurred_at, event_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (entry_id) DO NOTHING RETURNING true",
        entry_id,
        professional_id,
        booking_id,
        delta,
        cause,
        occurred_at,
        event_id,
    )
    return bool(inserted)


async def ledger_deltas(conn: asyncpg.Connection | asyncpg.Pool, professional_id: str) -> list[int]:
    rows = await conn.fetch("SELECT delta FROM score_ledger WHERE professional_id = $1", professional_id)
    return [r["delta"] for r in rows]


def hold_from_row(row: Mapping[str, Any]) -> Hold:
    """A stored hold (its HOLD_COLUMNS) as the domain's value."""
    return Hold(
        hold_id=row["hold_id"],
        status=row["status"],
        occurred_at=row["occurred_at"],
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        lift_cause=row["lift_cause"],
        excused_at=row["excused_at"],
        cleared_at=row.get("cleared_at"),
    )


async def find_professional_for_update(conn: asyncpg.Connection, professional_id: str) -> asyncpg.Record | None:
    """The professional's row locked for this transaction, or None when scoring has never heard
    of them (unlike `lock_professional`, it creates nothing)."""
    return await conn.fetchrow(
        "SELECT professional_id, suspended_at, suspension_holds FROM professionals"
        " WHERE professional_id = $1 FOR UPDATE",
        professional_id,
    )


async def has_penalty(conn: asyncpg.Connection, professional_id: str, booking_id: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM score_ledger"
            " WHERE professional_id = $1 AND booking_id = $2 AND cause = ANY($3::text[]))",
            professional_id,
            booking_id,
            sorted(PENALTY_CAUSES),
        )
    )


# --- booking events, a set at a time (issue 18) -------------------------------------------------
# One statement per kind for a whole set of records, whatever its size. The rows a set locks are
# locked in one statement each, in key order, so two replicas never wait on each other in a
# cycle; and kind by kind in the service's lock order: professionals, offices, patient standings.
# Creating and locking is one `INSERT ... ON CONFLICT DO UPDATE` (a no-op update): it locks the
# row whether it was just created or not, and returns it as it is now, even when another
# transaction created or changed it since this statement began (a SELECT would see its snapshot).


def _keys(pairs: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
    return [a for a, _ in pairs], [b for _, b in pairs]


async def lock_professionals(conn: asyncpg.Connection, professional_ids: Sequence[str]) -> dict[str, asyncpg.Record]:
    """The professionals' rows, created on first sight and locked for this transaction, so every
    change of one professional's ledger and holds is serialised (across replicas too)."""
    rows = await conn.fetch(
        "INSERT INTO professionals (professional_id) SELECT p FROM unnest($1::text[]) AS p ORDER BY p"
        " ON CONFLICT (professional_id) DO UPDATE SET suspended_at = professionals.suspended_at"
        " RETURNING professional_id, suspended_at, suspension_holds",
        sorted(set(professional_ids)),
    )
    return {r["professional_id"]: r for r in rows}


async def add_ledger_entries(conn: asyncpg.Connection, entries: Sequence[Mapping[str, Any]]) -> set[str]:
    """Append entries (entry_id, professional_id, booking_id, delta, cause, occurred_at,
    event_id); returns the ids of those added (an entry that exists already is the same effect,
    delivered again)."""
    rows = await conn.fetch(
        "INSERT INTO score_ledger (entry_id, professional_id, booking_id, delta, cause, occurred_at, event_id)"
        " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[], $6::timestamptz[],"
        " $7::text[]) ON CONFLICT (entry_id) DO NOTHING RETURNING entry_id::text AS entry_id",
        *columns(entries, "entry_id", "professional_id", "booking_id", "delta", "cause", "occurred_at", "event_id"),
    )
    return {r["entry_id"] for r in rows}


async def ledger_totals(conn: asyncpg.Connection, professional_ids: Sequence[str]) -> dict[str, int]:
    """Each professional's sum of ledger deltas (0 for one without entries)."""
    rows = await conn.fetch(
        "SELECT professional_id, sum(delta)::bigint AS total FROM score_ledger"
        " WHERE professional_id = ANY($1::text[]) GROUP BY professional_id",
        list(professional_ids),
    )
    totals = dict.fromkeys(professional_ids, 0)
    totals.update({r["professional_id"]: r["total"] for r in rows})
    return totals


async def holds_by_professional(conn: asyncpg.Connection, professional_ids: Sequence[str]) -> dict[str, list[Hold]]:
    """Each professional's holds, oldest first (an empty list for one without)."""
    rows = await conn.fetch(
        f"SELECT {HOLD_COLUMNS} FROM holds WHERE professional_id = ANY($1::text[])"
        " ORDER BY professional_id, occurred_at, hold_id",
        list(professional_ids),
    )
    holds: dict[str, list[Hold]] = {p: [] for p in professional_ids}
    for r in rows:
        holds[r["professional_id"]].append(hold_from_row(r))
    return holds


async def add_holds(conn: asyncpg.Connection, holds: Sequence[Mapping[str, Any]]) -> None:
    """Place holds (hold_id, professional_id, booking_id, cause, occurred_at, starts_at, ends_at);
    one that exists already stays as it is."""
    await conn.execute(
        "INSERT INTO holds (hold_id, professional_id, booking_id, cause, occurred_at, starts_at, ends_at)"
        " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],"
        " $6::timestamptz[], $7::timestamptz[]) ON CONFLICT DO NOTHING",
        *columns(holds, "hold_id", "professional_id", "booking_id", "cause", "occurred_at", "starts_at", "ends_at"),
    )


async def suspend_professionals(
    conn: asyncpg.Connection, suspensions: Sequence[tuple[str, datetime, Sequence[str]]]
) -> set[str]:
    """Mark accounts suspended: (professional_id, at, hold ids), one per professional. Returns
    the professionals suspended now (one suspended already stays as it was: suspension happens
    once)."""
    rows = await conn.fetch(
        "UPDATE professionals p SET suspended_at = s.at, suspension_holds = string_to_array(s.holds, ',')"
        " FROM unnest($1::text[], $2::timestamptz[], $3::text[]) AS s(professional_id, at, holds)"
        " WHERE p.professional_id = s.professional_id AND p.suspended_at IS NULL RETURNING p.professional_id",
        [p for p, _, _ in suspensions],
        [at for _, at, _ in suspensions],
        # Hold ids are uuids: a comma never occurs in one.
        [",".join(ids) for _, _, ids in suspensions],
    )
    return {r["professional_id"] for r in rows}


async def lock_offices(conn: asyncpg.Connection, practice_ids: Sequence[str]) -> None:
    """The offices' rows, created on first sight and locked for this transaction."""
    await conn.execute(
        "INSERT INTO offices (practice_id) SELECT p FROM unnest($1::text[]) AS p ORDER BY p"
        " ON CONFLICT (practice_id) DO UPDATE SET created_at = offices.created_at",
        sorted(set(practice_ids)),
    )


async def add_office_entries(conn: asyncpg.Connection, entries: Sequence[Mapping[str, Any]]) -> set[str]:
    """Append office entries (entry_id, practice_id, booking_id, delta, cause, occurred_at,
    event_id); returns the ids of those added."""
    rows = await conn.fetch(
        "INSERT INTO office_ledger (entry_id, practice_id, booking_id, delta, cause, occurred_at, event_id)"
        " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[], $6::timestamptz[],"
        " $7::text[]) ON CONFLICT (entry_id) DO NOTHING RETURNING entry_id::text AS entry_id",
        *columns(entries, "entry_id", "practice_id", "booking_id", "delta", "cause", "occurred_at", "event_id"),
    )
    return {r["entry_id"] for r in rows}


async def office_totals(conn: asyncpg.Connection, practice_ids: Sequence[str]) -> dict[str, int]:
    """Each office's sum of ledger deltas (0 for one without entries)."""
    rows = await conn.fetch(
        "SELECT practice_id, sum(delta)::bigint AS total FROM office_ledger"
        " WHERE practice_id = ANY($1::text[]) GROUP BY practice_id",
        list(practice_ids),
    )
    totals = dict.fromkeys(practice_ids, 0)
    totals.update({r["practice_id"]: r["total"] for r in rows})
    return totals


async def lock_standings(
    conn: asyncpg.Connection, pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], asyncpg.Record]:
    """The patients' standings at the practices, by (practice_id, patient_id): created (good) on
    first sight and locked for this transaction."""
    rows = await conn.fetch(
        "INSERT INTO patient_standings (practice_id, patient_id)"
        " SELECT practice_id, patient_id FROM unnest($1::text[], $2::text[]) AS s(practice_id, patient_id)"
        " ORDER BY practice_id, patient_id"
        " ON CONFLICT (practice_id, patient_id) DO UPDATE SET standing = patient_standings.standing"
        " RETURNING practice_id, patient_id, standing, count, next_review_at",
        *_keys(sorted(set(pairs))),
    )
    return {(r["practice_id"], r["patient_id"]): r for r in rows}


async def add_cases(conn: asyncpg.Connection, cases: Sequence[Mapping[str, Any]]) -> set[str]:
    """Record no-shows and late cancellations (case_id, practice_id, patient_id, booking_id,
    kind, occurred_at, event_id); returns the ids of those added (a booking's case is known
    once)."""
    rows = await conn.fetch(
        "INSERT INTO patient_cases (case_id, practice_id, patient_id, booking_id, kind, occurred_at, event_id)"
        " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],"
        " $7::text[]) ON CONFLICT (case_id) DO NOTHING RETURNING case_id::text AS case_id",
        *columns(cases, "case_id", "practice_id", "patient_id", "booking_id", "kind", "occurred_at", "event_id"),
    )
    return {r["case_id"] for r in rows}


async def standing_rules_of(conn: asyncpg.Connection, practice_ids: Sequence[str]) -> dict[str, StandingRules]:
    """The practices' standing rules, or the contract's defaults (off) for one that never set any."""
    rows = await conn.fetch(
        "SELECT practice_id, enabled, window_days, forgive_first, deposit_required_after,"
        " prepayment_required_after, online_booking_blocked_after FROM practice_standing_rules"
        " WHERE practice_id = ANY($1::text[])",
        list(practice_ids),
    )
    rules = dict.fromkeys(practice_ids, StandingRules())
    rules.update({r["practice_id"]: StandingRules(**{k: v for k, v in r.items() if k != "practice_id"}) for r in rows})
    return rules


async def counted_cases(
    conn: asyncpg.Connection, pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[tuple[str, datetime]]]:
    """(case_id, occurred_at) of each case that still counts, by (practice_id, patient_id),
    oldest first (an empty list for a patient without)."""
    rows = await conn.fetch(
        "SELECT practice_id, patient_id, c.case_id::text AS case_id, c.occurred_at FROM patient_cases c"
        " JOIN unnest($1::text[], $2::text[]) AS s(practice_id, patient_id) USING (practice_id, patient_id)"
        " WHERE c.excused_at IS NULL ORDER BY c.occurred_at, c.case_id",
        *_keys(sorted(set(pairs))),
    )
    cases: dict[tuple[str, str], list[tuple[str, datetime]]] = {pair: [] for pair in pairs}
    for r in rows:
        cases[(r["practice_id"], r["patient_id"])].append((r["case_id"], r["occurred_at"]))
    return cases


async def save_standings(conn: asyncpg.Connection, standings: Sequence[Mapping[str, Any]]) -> None:
    """Store standings (practice_id, patient_id, standing, count, changed_at, next_review_at), one
    per patient and practice; `changed_at` None keeps the time of the last move."""
    await conn.execute(
        "UPDATE patient_standings p SET standing = s.standing, count = s.count,"
        " changed_at = coalesce(s.changed_at, p.changed_at), next_review_at = s.next_review_at"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::timestamptz[], $6::timestamptz[])"
        " AS s(practice_id, patient_id, standing, count, changed_at, next_review_at)"
        " WHERE p.practice_id = s.practice_id AND p.patient_id = s.patient_id",
        *columns(standings, "practice_id", "patient_id", "standing", "count", "changed_at", "next_review_at"),
    )


# --- excuses -----------------------------------------------------------------------------------


async def get_excuse(conn: asyncpg.Connection, excuse_id: str, *, for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT {EXCUSE_COLUMNS} FROM excuses WHERE excuse_id = $1{lock}", excuse_id)


async def add_excuse(
    conn: asyncpg.Connection,
    *,
    excuse_id: str,
    professional_id: str,
    booking_id: str,
    document_ref: str,
    submitted_at: datetime,
    status: str,
    reason: str | None,
    message: str | None,
    event_id: str,
) -> bool:
    """Record a submitted excuse; False when that excuse_id is recorded already."""
    inserted = await conn.fetchval(
        "INSERT INTO excuses (excuse_id, professional_id, booking_id, document_ref, submitted_at, status,"
        " reason, message, submitted_event_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        " ON CONFLICT (excuse_id) DO NOTHING RETURNING true",
        excuse_id,
        professional_id,
        booking_id,
        document_ref,
        submitted_at,
        status,
        reason,
        message,
        event_id,
    )
    return bool(inserted)


async def complete_excuse(
    conn: asyncpg.Connection,
    *,
    excuse_id: str,
    booking_id: str,
    document_ref: str,
    submitted_at: datetime,
    event_id: str,
) -> bool:
    """Fill in the submission of an excuse known only from its review (it stays as decided)."""
    updated = await conn.fetchval(
        "UPDATE excuses SET booking_id = $2, document_ref = $3, submitted_at = $4, submitted_event_id = $5,"
        " updated_at = now() WHERE excuse_id = $1 AND submitted_at IS NULL RETURNING true",
        excuse_id,
        booking_id,
        document_ref,
        submitted_at,
        event_id,
    )
    return bool(updated)


async def add_unknown_excuse_review(
    conn: asyncpg.Connection,
    *,
    excuse_id: str,
    professional_id: str | None,
    decision: str,
    reviewer_id: str,
    reviewed_at: datetime,
    reason: str,
    message: str,
    event_id: str,
) -> bool:
    """Record a review of an excuse never submitted, as rejected with the reason."""
    inserted = await conn.fetchval(
        "INSERT INTO excuses (excuse_id, professional_id, status, reason, message, decision, reviewer_id,"
        " reviewed_at, reviewed_event_id) VALUES ($1, $2, 'rejected', $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (excuse_id) DO NOTHING RETURNING true",
        excuse_id,
        professional_id,
        reason,
        message,
        decision,
        reviewer_id,
        reviewed_at,
        event_id,
    )
    return bool(inserted)


async def review_excuse(
    conn: asyncpg.Connection,
    *,
    excuse_id: str,
    status: str,
    reason: str | None,
    message: str | None,
    decision: str,
    reviewer_id: str,
    reviewed_at: datetime,
    event_id: str,
) -> None:
    await conn.execute(
        "UPDATE excuses SET status = $2, reason = $3, message = $4, decision = $5, reviewer_id = $6,"
        " reviewed_at = $7, reviewed_event_id = $8, updated_at = now() WHERE excuse_id = $1",
        excuse_id,
        status,
        reason,
        message,
        decision,
        reviewer_id,
        reviewed_at,
        event_id,
    )


async def note_review(
    conn: asyncpg.Connection, *, excuse_id: str, decision: str, reviewer_id: str, reviewed_at: datetime, event_id: str
) -> bool:
    """Keep the first review of an excuse scoring refused before anyone reviewed it (its status
    and reason stay); False when it had a review already."""
    updated = await conn.fetchval(
        "UPDATE excuses SET decision = $2, reviewer_id = $3, reviewed_at = $4, reviewed_event_id = $5,"
        " updated_at = now() WHERE excuse_id = $1 AND decision IS NULL RETURNING true",
        excuse_id,
        decision,
        reviewer_id,
        reviewed_at,
        event_id,
    )
    return bool(updated)


async def excuse_hold(
    conn: asyncpg.Connection, professional_id: str, booking_id: str, *, excuse_id: str, at: datetime
) -> tuple[str, bool] | None:
    """Mark the booking's hold excused at `at`, lifting it when it still runs. Returns
    (hold_id, True when it was lifted now), or None when there is no hold not yet excused."""
    row = await conn.fetchrow(
        "WITH old AS (SELECT hold_id, status FROM holds"
        "  WHERE professional_id = $1 AND booking_id = $2 AND excused_at IS NULL FOR UPDATE)"
        " UPDATE holds h SET excused_at = $4, excuse_id = $3,"
        "  status = 'lifted',"
        "  lift_cause = CASE WHEN old.status = 'running' THEN 'excused' ELSE h.lift_cause END,"
        "  lifted_at = CASE WHEN old.status = 'running' THEN $4 ELSE h.lifted_at END"
        " FROM old WHERE h.hold_id = old.hold_id"
        " RETURNING h.hold_id::text AS hold_id, old.status = 'running' AS lifted_now",
        professional_id,
        booking_id,
        excuse_id,
        at,
    )
    return (row["hold_id"], row["lifted_now"]) if row else None


# --- hold expiry -------------------------------------------------------------------------------


async def lock_professionals_with_due_holds(conn: asyncpg.Connection, now: datetime, limit: int) -> list[str]:
    """Claim up to `limit` professionals with a running hold that has ended: their rows locked
    for this transaction, skipping any another replica (or a consumer) holds, so each due hold
    is lifted by exactly one transaction and in order with that professional's other events.
    A professional whose lift failed for good is left out until its `hold_expiry_retry_at`."""
    rows = await conn.fetch(
        "SELECT p.professional_id FROM professionals p"
        " WHERE p.professional_id IN (SELECT professional_id FROM holds WHERE status = 'running' AND ends_at <= $1)"
        " AND (p.hold_expiry_retry_at IS NULL OR p.hold_expiry_retry_at <= $1)"
        " ORDER BY p.professional_id LIMIT $2 FOR UPDATE OF p SKIP LOCKED",
        now,
        limit,
    )
    return [r["professional_id"] for r in rows]


async def expire_holds(
    conn: asyncpg.Connection, professional_ids: Sequence[str], now: datetime
) -> list[asyncpg.Record]:
    """Lift the running holds of these (locked) professionals that ended by `now`, as expired at
    their end. Returns (hold_id, professional_id, ends_at) of each."""
    return await conn.fetch(
        "UPDATE holds SET status = 'lifted', lift_cause = 'expired', lifted_at = ends_at"
        " WHERE professional_id = ANY($1::text[]) AND status = 'running' AND ends_at <= $2"
        " RETURNING hold_id::text AS hold_id, professional_id, ends_at",
        list(professional_ids),
        now,
    )


async def defer_hold_expiry(conn: asyncpg.Connection, professional_id: str, until: datetime) -> None:
    """Leave the professional out of hold expiry until `until` (its lift failed for good)."""
    await conn.execute(
        "UPDATE professionals SET hold_expiry_retry_at = $2 WHERE professional_id = $1", professional_id, until
    )


# --- recalculation -----------------------------------------------------------------------------


async def ledger_entries(conn: asyncpg.Connection, professional_id: str) -> list[Entry]:
    rows = await conn.fetch(
        "SELECT booking_id, delta, cause FROM score_ledger WHERE professional_id = $1"
        " ORDER BY occurred_at, recorded_at, entry_id",
        professional_id,
    )
    return [Entry(booking_id=r["booking_id"], delta=r["delta"], cause=r["cause"]) for r in rows]


async def approved_excuse_bookings(conn: asyncpg.Connection, professional_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT booking_id FROM excuses WHERE professional_id = $1 AND status = 'approved'"
        " ORDER BY reviewed_at, excuse_id",
        professional_id,
    )
    return [r["booking_id"] for r in rows]


async def professionals_to_recalculate(conn: asyncpg.Connection) -> list[str]:
    """Every professional whose score a recalculation would move: an approved excuse whose
    booking's penalty the ledger has not taken out yet. (The score is the ledger's sum, so
    nothing else can be out of date.) Ordered, so concurrent runs lock rows in one order."""
    rows = await conn.fetch(
        "SELECT DISTINCT e.professional_id FROM excuses e"
        " WHERE e.status = 'approved' AND NOT EXISTS (SELECT 1 FROM score_ledger l"
        "  WHERE l.professional_id = e.professional_id AND l.booking_id = e.booking_id AND l.cause = 'excused')"
        " ORDER BY e.professional_id",
    )
    return [r["professional_id"] for r in rows]


async def claim_recalculation_run(conn: asyncpg.Connection, run_date: date) -> bool:
    """Claim the night's run inside the caller's transaction; False when a replica has it (a
    concurrent claim waits on the row until the other transaction ends)."""
    claimed = await conn.fetchval(
        "INSERT INTO recalculation_runs (run_date) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true", run_date
    )
    return bool(claimed)


async def recalculation_ran(conn: asyncpg.Connection, run_date: date) -> bool:
    """Whether the night's run is recorded (committed by this or another replica)."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM recalculation_runs WHERE run_date = $1)", run_date))


async def finish_recalculation_run(
    conn: asyncpg.Connection, run_date: date, *, professionals: int, entries: int
) -> None:
    await conn.execute(
        "UPDATE recalculation_runs SET professionals = $2, entries = $3 WHERE run_date = $1",
        run_date,
        professionals,
        entries,
    )


# --- reads -------------------------------------------------------------------------------------


async def get_professional(pool: asyncpg.Pool, professional_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT professional_id, suspended_at, suspension_holds, created_at FROM professionals"
        " WHERE professional_id = $1",
        professional_id,
    )


async def ledger(pool: asyncpg.Pool, professional_id: str, *, limit: int, offset: int) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT entry_id::text AS entry_id, booking_id, delta, cause, occurred_at, event_id, recorded_at"
        " FROM score_ledger WHERE professional_id = $1 ORDER BY occurred_at, recorded_at, entry_id"
        " LIMIT $2 OFFSET $3",
        professional_id,
        limit,
        offset,
    )


async def holds_for_read(pool: asyncpg.Pool, professional_id: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"SELECT {HOLD_COLUMNS}, placed_at FROM holds WHERE professional_id = $1 ORDER BY starts_at, hold_id",
        professional_id,
    )


async def professional_known(pool: asyncpg.Pool, professional_id: str) -> bool:
    """Whether scoring has heard of the professional: a score event, or an excuse recorded under
    their id (even one refused as `unknown_professional`)."""
    return bool(
        await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM professionals WHERE professional_id = $1)"
            " OR EXISTS (SELECT 1 FROM excuses WHERE professional_id = $1)",
            professional_id,
        )
    )


async def excuses_for_read(
    pool: asyncpg.Pool, professional_id: str, *, limit: int, offset: int
) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"SELECT {EXCUSE_COLUMNS} FROM excuses WHERE professional_id = $1 ORDER BY recorded_at, excuse_id"
        " LIMIT $2 OFFSET $3",
        professional_id,
        limit,
        offset,
    )


async def excuses_by_status(pool: asyncpg.Pool, status: str, *, limit: int, offset: int) -> list[asyncpg.Record]:
    """Every professional's excuses in one status, oldest first (the review queue)."""
    return await pool.fetch(
        f"SELECT {EXCUSE_COLUMNS} FROM excuses WHERE status = $1 ORDER BY recorded_at, excuse_id LIMIT $2 OFFSET $3",
        status,
        limit,
        offset,
    )


async def excuse_for_read(pool: asyncpg.Pool, excuse_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(f"SELECT {EXCUSE_COLUMNS} FROM excuses WHERE excuse_id = $1", excuse_id)


# --- second release (issue 17): reinstatement, patient standing, office scores -----------------
# Lock order as everywhere: a professional's row first; then an office's; then a patient's
# standing (a booking.cancelled may touch all three, in that order).


async def reinstate(
    conn: asyncpg.Connection,
    professional_id: str,
    *,
    reinstated_at: datetime,
    reviewer_id: str,
    note: str | None,
    suspended_at: datetime,
    suspension_holds: Sequence[str],
    event_id: str,
) -> bool:
    """End the suspension (the professional's row locked by the caller): record it, clear the
    holds that led to it and lift the suspension; False when this reinstatement is recorded."""
    recorded = await conn.fetchval(
        "INSERT INTO reinstatements (professional_id, reinstated_at, reviewer_id, note, suspended_at,"
        " suspension_holds, event_id) VALUES ($1, $2, $3, $4, $5, $6::text[], $7)"
        " ON CONFLICT (professional_id, reinstated_at) DO NOTHING RETURNING true",
        professional_id,
        reinstated_at,
        reviewer_id,
        note,
        suspended_at,
        list(suspension_holds),
        event_id,
    )
    if not recorded:
        return False
    await conn.execute(
        "UPDATE holds SET cleared_at = $3 WHERE professional_id = $1 AND hold_id::text = ANY($2::text[])"
        " AND cleared_at IS NULL",
        professional_id,
        list(suspension_holds),
        reinstated_at,
    )
    await conn.execute(
        "UPDATE professionals SET suspended_at = NULL, suspension_holds = NULL WHERE professional_id = $1",
        professional_id,
    )
    return True


async def set_standing_rules(
    conn: asyncpg.Connection, practice_id: str, rules: StandingRules, *, configured_at: datetime
) -> None:
    """Keep the practice's newest standing rules by their own time (an older configuration
    arriving late changes nothing)."""
    await conn.execute(
        "INSERT INTO practice_standing_rules (practice_id, enabled, window_days, forgive_first,"
        " deposit_required_after, prepayment_required_after, online_booking_blocked_after, configured_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (practice_id) DO UPDATE SET"
        " enabled = EXCLUDED.enabled, window_days = EXCLUDED.window_days,"
        " forgive_first = EXCLUDED.forgive_first, deposit_required_after = EXCLUDED.deposit_required_after,"
        " prepayment_required_after = EXCLUDED.prepayment_required_after,"
        " online_booking_blocked_after = EXCLUDED.online_booking_blocked_after,"
        " configured_at = EXCLUDED.configured_at"
        " WHERE practice_standing_rules.configured_at <= EXCLUDED.configured_at",
        practice_id,
        rules.enabled,
        rules.window_days,
        rules.forgive_first,
        rules.deposit_required_after,
        rules.prepayment_required_after,
        rules.online_booking_blocked_after,
        configured_at,
    )


async def cases_of_booking(conn: asyncpg.Connection, booking_id: str) -> list[asyncpg.Record]:
    """The cases a booking made (its practice and patient), not yet excused."""
    return await conn.fetch(
        "SELECT case_id::text AS case_id, practice_id, patient_id FROM patient_cases"
        " WHERE booking_id = $1 AND excused_at IS NULL ORDER BY practice_id, patient_id",
        booking_id,
    )


async def excuse_case(conn: asyncpg.Connection, case_id: str, *, at: datetime) -> bool:
    """The case no longer counts (its fee was waived); False when it was excused already."""
    return bool(
        await conn.fetchval(
            "UPDATE patient_cases SET excused_at = $2 WHERE case_id = $1::uuid AND excused_at IS NULL RETURNING true",
            case_id,
            at,
        )
    )


async def claim_due_standings(conn: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    """Standings whose oldest counted case has aged out by `now`, locked for this transaction,
    skipping any another replica (or a consumer) holds."""
    return await conn.fetch(
        "SELECT practice_id, patient_id, standing, count, next_review_at FROM patient_standings"
        " WHERE next_review_at <= $1 ORDER BY next_review_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        limit,
    )


# --- second-release reads ----------------------------------------------------------------------


async def suspended_professionals(pool: asyncpg.Pool, *, limit: int, offset: int) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT professional_id, suspended_at, suspension_holds FROM professionals"
        " WHERE suspended_at IS NOT NULL ORDER BY suspended_at, professional_id LIMIT $1 OFFSET $2",
        limit,
        offset,
    )


async def reinstatements_of(pool: asyncpg.Pool, professional_id: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT reinstated_at, reviewer_id, note, suspended_at, suspension_holds FROM reinstatements"
        " WHERE professional_id = $1 ORDER BY reinstated_at",
        professional_id,
    )


async def standing_counts(pool: asyncpg.Pool, practice_ids: list[str] | None) -> list[asyncpg.Record]:
    """Patients per practice and standing (None: every practice)."""
    return await pool.fetch(
        "SELECT practice_id, standing, count(*)::int AS patients FROM patient_standings"
        " WHERE ($1::text[] IS NULL OR practice_id = ANY($1)) GROUP BY practice_id, standing"
        " ORDER BY practice_id, standing",
        practice_ids,
    )


async def standings_not_good(pool: asyncpg.Pool, practice_id: str, *, limit: int, offset: int) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT patient_id, standing, count, changed_at, next_review_at FROM patient_standings"
        " WHERE practice_id = $1 AND standing <> 'good' ORDER BY changed_at DESC NULLS LAST, patient_id"
        " LIMIT $2 OFFSET $3",
        practice_id,
        limit,
        offset,
    )


async def patient_standing_for_read(pool: asyncpg.Pool, practice_id: str, patient_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT patient_id, standing, count, changed_at, next_review_at FROM patient_standings"
        " WHERE practice_id = $1 AND patient_id = $2",
        practice_id,
        patient_id,
    )


async def office_scores(
    pool: asyncpg.Pool, practice_ids: list[str] | None, *, limit: int, offset: int
) -> list[asyncpg.Record]:
    """Each office's ledger total (its score is the base plus it) and its cancellations of booked
    professionals."""
    return await pool.fetch(
        "SELECT o.practice_id, coalesce(sum(l.delta), 0)::int AS deltas,"
        " count(l.entry_id) FILTER (WHERE l.cause = 'cancelled_professional')::int AS timely_cancellations,"
        " count(l.entry_id) FILTER (WHERE l.cause = 'late_cancelled_professional')::int AS late_cancellations"
        " FROM offices o LEFT JOIN office_ledger l USING (practice_id)"
        " WHERE ($1::text[] IS NULL OR o.practice_id = ANY($1))"
        " GROUP BY o.practice_id ORDER BY o.practice_id LIMIT $2 OFFSET $3",
        practice_ids,
        limit,
        offset,
    )

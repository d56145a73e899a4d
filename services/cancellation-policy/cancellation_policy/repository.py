"""Every SQL statement of the cancellation-policy service, nothing else."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg


async def add_settings_version(
    conn: asyncpg.Connection,
    practice_id: str,
    *,
    settings: dict[str, Any],
    name: str,
    timezone: str,
    locale: str,
    configured_at: datetime,
) -> int:
    """Store a new version of a practice's settings; returns its number (1, 2, ...)."""
    # Serialise writers of one practice so version numbers never collide.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"practice:{practice_id}")
    version: int = await conn.fetchval(
        "INSERT INTO practice_settings (practice_id, version, settings, name, timezone, locale, configured_at)"
        " SELECT $1, coalesce(max(version), 0) + 1, $2::jsonb, $3, $4, $5, $6"
        " FROM practice_settings WHERE practice_id = $1 RETURNING version",
        practice_id,
        json.dumps(settings),
        name,
        timezone,
        locale,
        configured_at,
    )
    return version


async def record_scheduling(
    conn: asyncpg.Connection, *, booking_id: str, practice_id: str, scheduled_at: datetime
) -> bool:
    """Remember when a booking was scheduled (its first booking.scheduled); False when known."""
    inserted = await conn.fetchval(
        "INSERT INTO booking_schedules (booking_id, practice_id, scheduled_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (booking_id) DO NOTHING RETURNING true",
        booking_id,
        practice_id,
        scheduled_at,
    )
    return bool(inserted)


# A stored settings version: its number and its JSON text, as Postgres renders the jsonb (the
# handler validates each text once, however many requests it decides).
StoredSettings = tuple[int, str]


async def settings_for_requests(
    conn: asyncpg.Connection, requests: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], tuple[StoredSettings | None, bool, StoredSettings | None]]:
    """For each (practice_id, booking_id): (the practice's newest settings, None when it never
    configured any; whether the booking's scheduling was seen; the practice's settings in force
    then: the newest configured at or before it, None when there were none yet). One statement
    for the whole set."""
    unique = list(dict.fromkeys(requests))
    rows = await conn.fetch(
        "SELECT r.practice_id, r.booking_id, c.version AS current_version, c.settings::text AS current_settings,"
        " b.booking_id IS NOT NULL AS scheduled_known, f.version AS then_version, f.settings::text AS then_settings"
        " FROM unnest($1::text[], $2::text[]) AS r(practice_id, booking_id)"
        " LEFT JOIN LATERAL (SELECT version, settings FROM practice_settings WHERE practice_id = r.practice_id"
        "  ORDER BY version DESC LIMIT 1) c ON true"
        " LEFT JOIN booking_schedules b ON b.booking_id = r.booking_id"
        " LEFT JOIN LATERAL (SELECT version, settings FROM practice_settings"
        "  WHERE practice_id = r.practice_id AND configured_at <= b.scheduled_at"
        "  ORDER BY configured_at DESC, version DESC LIMIT 1) f ON true",
        [practice_id for practice_id, _ in unique],
        [booking_id for _, booking_id in unique],
    )
    return {
        (row["practice_id"], row["booking_id"]): (
            (row["current_version"], row["current_settings"]) if row["current_version"] is not None else None,
            row["scheduled_known"],
            (row["then_version"], row["then_settings"]) if row["then_version"] is not None else None,
        )
        for row in rows
    }


async def record_decisions(
    conn: asyncpg.Connection, decisions: Sequence[tuple[str, str, str, dict[str, Any]]]
) -> set[str]:
    """Record each (request_id, booking_id, practice_id, decision) in one statement; returns the
    request ids recorded now. A request decided already is left as it is; a request id twice in
    `decisions` is recorded with its first decision."""
    first: dict[str, tuple[str, str, str, dict[str, Any]]] = {}
    for decision in decisions:
        first.setdefault(decision[0], decision)
    if not first:
        return set()
    # Inserted in request id order, so two replicas inserting overlapping sets (a rebalance)
    # wait for each other instead of deadlocking.
    rows = sorted(first.values(), key=lambda d: d[0])
    inserted = await conn.fetch(
        "INSERT INTO decisions (request_id, booking_id, practice_id, policy_version, allowed, classification,"
        " explanation, decision)"
        " SELECT request_id, booking_id, practice_id, policy_version, allowed, classification, explanation,"
        " decision::jsonb"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::boolean[], $6::text[], $7::text[],"
        " $8::text[]) AS d(request_id, booking_id, practice_id, policy_version, allowed, classification,"
        " explanation, decision)"
        " ORDER BY request_id"
        " ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
        [request_id for request_id, _, _, _ in rows],
        [booking_id for _, booking_id, _, _ in rows],
        [practice_id for _, _, practice_id, _ in rows],
        [d["policy_version"] for _, _, _, d in rows],
        [d["allowed"] for _, _, _, d in rows],
        [d["classification"] for _, _, _, d in rows],
        [d.get("explanation", "") for _, _, _, d in rows],
        [json.dumps(d) for _, _, _, d in rows],
    )
    return {row["request_id"] for row in inserted}


# --- reads -------------------------------------------------------------------------------------


async def latest_version(pool: asyncpg.Pool, practice_id: str) -> int | None:
    """The practice's newest settings version; None when it never configured anything."""
    version: int | None = await pool.fetchval(
        "SELECT max(version) FROM practice_settings WHERE practice_id = $1", practice_id
    )
    return version


async def settings_history(pool: asyncpg.Pool, practice_id: str, *, limit: int, offset: int) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT version, settings::text AS settings, name, timezone, locale, configured_at"
        " FROM practice_settings WHERE practice_id = $1 ORDER BY version LIMIT $2 OFFSET $3",
        practice_id,
        limit,
        offset,
    )


async def decisions_for_booking(
    pool: asyncpg.Pool,
    booking_id: str,
    *,
    practice_ids: list[str] | None,  # None: every practice
    limit: int,
    offset: int,
) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT request_id, practice_id, policy_version, allowed, classification, explanation,"
        " decision::text AS decision, decided_at FROM decisions"
        " WHERE booking_id = $1 AND ($2::text[] IS NULL OR practice_id = ANY($2))"
        " ORDER BY decided_at, request_id LIMIT $3 OFFSET $4",
        booking_id,
        practice_ids,
        limit,
        offset,
    )


async def has_decisions(pool: asyncpg.Pool, booking_id: str, *, practice_ids: list[str] | None) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM decisions WHERE booking_id = $1"
            " AND ($2::text[] IS NULL OR practice_id = ANY($2)))",
            booking_id,
            practice_ids,
        )
    )


# --- reports (second release) ----------------------------------------------------------------------


async def fees_by_tier(
    pool: asyncpg.Pool, *, practice_ids: list[str] | None, decided_from: datetime, decided_before: datetime
) -> list[asyncpg.Record]:
    """Allowed decisions with a fee decided in the period, per practice, classification, tier
    (its notice; NULL: the flat fee or a no-show's) and currency: how many, and their total."""
    return await pool.fetch(
        "SELECT practice_id, classification, (decision->'tier'->>'notice_under_hours')::int AS notice_under_hours,"
        " decision->'fee'->>'currency' AS currency, count(*)::int AS fees,"
        " sum((decision->'fee'->>'amount')::numeric) AS total"
        " FROM decisions WHERE allowed AND decision ? 'fee' AND decided_at >= $2 AND decided_at < $3"
        " AND ($1::text[] IS NULL OR practice_id = ANY($1))"
        " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3 NULLS LAST, 4",
        practice_ids,
        decided_from,
        decided_before,
    )


async def turnaway_pay(
    pool: asyncpg.Pool, *, practice_ids: list[str] | None, decided_from: datetime, decided_before: datetime
) -> list[asyncpg.Record]:
    """Turn-away pay decided in the period, per practice and currency, and the office's
    cancellations of booked professionals by cause."""
    return await pool.fetch(
        "SELECT practice_id, decision->'turnaway_pay'->>'currency' AS currency,"
        " count(*) FILTER (WHERE decision ? 'turnaway_pay')::int AS owed,"
        " sum((decision->'turnaway_pay'->>'amount')::numeric) AS total,"
        " count(*) FILTER (WHERE decision->>'office_cause' = 'cancelled_professional')::int AS timely_cancellations,"
        " count(*) FILTER (WHERE decision->>'office_cause' = 'late_cancelled_professional')::int AS late_cancellations"
        " FROM decisions WHERE allowed AND decision ? 'office_cause' AND decided_at >= $2 AND decided_at < $3"
        " AND ($1::text[] IS NULL OR practice_id = ANY($1))"
        " GROUP BY 1, 2 ORDER BY 1, 2 NULLS FIRST",
        practice_ids,
        decided_from,
        decided_before,
    )


async def record_card(
    conn: asyncpg.Connection, *, practice_id: str, patient_id: str, has_card: bool, changed_at: datetime
) -> bool:
    """Whether the patient has a card on file at the practice, as of `changed_at`; an event older
    than what is stored changes nothing (False)."""
    changed = await conn.fetchval(
        "INSERT INTO patient_cards (practice_id, patient_id, has_card, changed_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (practice_id, patient_id) DO UPDATE SET has_card = EXCLUDED.has_card,"
        " changed_at = EXCLUDED.changed_at WHERE patient_cards.changed_at < EXCLUDED.changed_at"
        " RETURNING true",
        practice_id,
        patient_id,
        has_card,
        changed_at,
    )
    return bool(changed)


async def cards_on_file(conn: asyncpg.Connection, patients: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bool]:
    """For each (practice_id, patient_id) upstream.patients.v1 spoke of: whether the patient has a
    card on file there (a pair never spoken of is absent). One statement for the whole set."""
    unique = list(dict.fromkeys(patients))
    rows = await conn.fetch(
        "SELECT c.practice_id, c.patient_id, c.has_card FROM patient_cards c"
        " JOIN unnest($1::text[], $2::text[]) AS r(practice_id, patient_id)"
        " ON c.practice_id = r.practice_id AND c.patient_id = r.patient_id",
        [practice_id for practice_id, _ in unique],
        [patient_id for _, patient_id in unique],
    )
    return {(row["practice_id"], row["patient_id"]): bool(row["has_card"]) for row in rows}

"""Every SQL statement of the cancellation-policy service, nothing else."""

from __future__ import annotations

import json
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
    return await conn.fetchval(
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


async def current_settings(conn: asyncpg.Connection, practice_id: str) -> tuple[int, dict[str, Any]] | None:
    row = await conn.fetchrow(
        "SELECT version, settings::text AS settings FROM practice_settings WHERE practice_id = $1"
        " ORDER BY version DESC LIMIT 1",
        practice_id,
    )
    return (row["version"], json.loads(row["settings"])) if row else None


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


async def settings_when_scheduled(
    conn: asyncpg.Connection, practice_id: str, booking_id: str
) -> tuple[bool, tuple[int, dict[str, Any]] | None]:
    """(whether the booking's scheduling was seen, the practice's settings in force then: the
    newest configured at or before it, None when there were none yet)."""
    row = await conn.fetchrow(
        "SELECT s.version, s.settings::text AS settings FROM booking_schedules b"
        " LEFT JOIN LATERAL (SELECT version, settings FROM practice_settings"
        "  WHERE practice_id = $1 AND configured_at <= b.scheduled_at"
        "  ORDER BY configured_at DESC, version DESC LIMIT 1) s ON true"
        " WHERE b.booking_id = $2",
        practice_id,
        booking_id,
    )
    if row is None:
        return False, None
    return True, (row["version"], json.loads(row["settings"])) if row["version"] is not None else None


async def record_decision(
    conn: asyncpg.Connection, *, request_id: str, booking_id: str, practice_id: str, decision: dict[str, Any]
) -> bool:
    """Record the decision of a request; False when that request was decided already."""
    inserted = await conn.fetchval(
        "INSERT INTO decisions (request_id, booking_id, practice_id, policy_version, allowed, classification,"
        " explanation, decision) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)"
        " ON CONFLICT (request_id) DO NOTHING RETURNING true",
        request_id,
        booking_id,
        practice_id,
        decision["policy_version"],
        decision["allowed"],
        decision["classification"],
        decision.get("explanation", ""),
        json.dumps(decision),
    )
    return bool(inserted)


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


async def card_on_file(conn: asyncpg.Connection, practice_id: str, patient_id: str) -> bool | None:
    """True or False when upstream.patients.v1 said so, None when it never spoke of the patient."""
    has_card = await conn.fetchval(
        "SELECT has_card FROM patient_cards WHERE practice_id = $1 AND patient_id = $2", practice_id, patient_id
    )
    return None if has_card is None else bool(has_card)

"""Every SQL statement of the booking service, nothing else."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

BOOKING_COLUMNS = (
    "booking_id, practice_id, practitioner_id, service_code, starts_at, ends_at, patient_id,"
    " patient_portal_account, patient_card_on_file, professional_id, series_id,"
    " deposit_amount, deposit_currency, price_amount, price_currency, status, status_label,"
    " classification, closed_at"
)


async def insert_booking(conn: asyncpg.Connection, b: dict[str, Any]) -> bool:
    """Store a newly scheduled booking; False when it is known already (upstream replay)."""
    inserted = await conn.fetchval(
        "INSERT INTO bookings (booking_id, practice_id, practitioner_id, service_code, starts_at,"
        " ends_at, patient_id, patient_portal_account, patient_card_on_file, professional_id,"
        " series_id, deposit_amount, deposit_currency, price_amount, price_currency)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        " ON CONFLICT (booking_id) DO NOTHING RETURNING true",
        b["booking_id"],
        b["practice_id"],
        b["practitioner_id"],
        b["service_code"],
        b["starts_at"],
        b["ends_at"],
        b["patient_id"],
        b["patient_portal_account"],
        b["patient_card_on_file"],
        b["professional_id"],
        b["series_id"],
        b["deposit_amount"],
        b["deposit_currency"],
        b["price_amount"],
        b["price_currency"],
    )
    return bool(inserted)


async def lock_booking(conn: asyncpg.Connection, booking_id: str) -> asyncpg.Record | None:
    """The booking, locked for this transaction so per-booking changes are serialised."""
    return await conn.fetchrow(f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE booking_id = $1 FOR UPDATE", booking_id)


async def lock_later_in_series(conn: asyncpg.Connection, series_id: str, after: datetime) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE series_id = $1 AND starts_at > $2"
        " AND status = 'scheduled' ORDER BY starts_at FOR UPDATE",
        series_id,
        after,
    )


async def reschedule(conn: asyncpg.Connection, booking_id: str, starts_at: datetime, ends_at: datetime) -> None:
    await conn.execute(
        "UPDATE bookings SET starts_at = $2, ends_at = $3, updated_at = now() WHERE booking_id = $1",
        booking_id,
        starts_at,
        ends_at,
    )


async def close_booking(
    conn: asyncpg.Connection,
    booking_ids: list[str],
    *,
    status: str,
    closed_at: datetime,
    status_label: str | None = None,
    classification: str | None = None,
) -> None:
    await conn.execute(
        "UPDATE bookings SET status = $2, status_label = $3, classification = $4, closed_at = $5,"
        " updated_at = now() WHERE booking_id = ANY($1::text[]) AND status = 'scheduled'",
        booking_ids,
        status,
        status_label,
        classification,
        closed_at,
    )


async def add_pending_request(
    conn: asyncpg.Connection, request_id: str, booking_id: str, kind: str, request: dict[str, Any]
) -> str | None:
    """Record a request for the policy; None when new, else the booking the id was used for."""
    inserted = await conn.fetchval(
        "INSERT INTO pending_requests (request_id, booking_id, kind, request) VALUES ($1, $2, $3, $4::jsonb)"
        " ON CONFLICT (request_id) DO NOTHING RETURNING true",
        request_id,
        booking_id,
        kind,
        json.dumps(request),
    )
    if inserted:
        return None
    return await conn.fetchval("SELECT booking_id FROM pending_requests WHERE request_id = $1", request_id)


async def take_pending_request(conn: asyncpg.Connection, request_id: str) -> asyncpg.Record | None:
    """The undecided request, marked decided; None when unknown or decided already."""
    return await conn.fetchrow(
        "UPDATE pending_requests SET decided_at = now() WHERE request_id = $1 AND decided_at IS NULL"
        " RETURNING request_id, booking_id, kind, request::text AS request",
        request_id,
    )


async def audit(
    conn: asyncpg.Connection,
    booking_id: str,
    *,
    at: datetime,
    action: str,
    actor: dict[str, Any] | None = None,
    channel: str | None = None,
    request_id: str | None = None,
    reason: str | None = None,
    policy_version: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO audit_trail (booking_id, at, action, actor, channel, request_id, reason,"
        " policy_version, detail) VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9::jsonb)",
        booking_id,
        at,
        action,
        json.dumps(actor) if actor else None,
        channel,
        request_id,
        reason,
        policy_version,
        json.dumps(detail or {}),
    )


async def get_booking(conn: asyncpg.Connection | asyncpg.Pool, booking_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE booking_id = $1", booking_id)


async def audit_trail(conn: asyncpg.Connection | asyncpg.Pool, booking_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT seq, at, action, actor::text AS actor, channel, request_id, reason, policy_version,"
        " detail::text AS detail FROM audit_trail WHERE booking_id = $1 ORDER BY seq",
        booking_id,
    )


async def list_bookings(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    practice_ids: list[str] | None,  # None: every practice
    status: str | None,
    practitioner_id: str | None,
    starts_from: datetime | None,
    starts_before: datetime | None,
    limit: int,
    offset: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {BOOKING_COLUMNS} FROM bookings"
        " WHERE ($1::text[] IS NULL OR practice_id = ANY($1)) AND ($2::text IS NULL OR status = $2)"
        " AND ($3::text IS NULL OR practitioner_id = $3)"
        " AND ($4::timestamptz IS NULL OR starts_at >= $4) AND ($5::timestamptz IS NULL OR starts_at < $5)"
        " ORDER BY starts_at, booking_id LIMIT $6 OFFSET $7",
        practice_ids,
        status,
        practitioner_id,
        starts_from,
        starts_before,
        limit,
        offset,
    )


async def upsert_practice(
    conn: asyncpg.Connection, practice_id: str, waitlist_enabled: bool, offer_minutes: int
) -> None:
    await conn.execute(
        "INSERT INTO practices (practice_id, waitlist_enabled, offer_minutes) VALUES ($1, $2, $3)"
        " ON CONFLICT (practice_id) DO UPDATE SET waitlist_enabled = $2, offer_minutes = $3, updated_at = now()",
        practice_id,
        waitlist_enabled,
        offer_minutes,
    )


async def practice(conn: asyncpg.Connection, practice_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT practice_id, waitlist_enabled, offer_minutes FROM practices WHERE practice_id = $1", practice_id
    )


async def join_waitlist(conn: asyncpg.Connection, w: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO waitlist (waitlist_id, practice_id, patient_id, service_code, practitioner_id, joined_at)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (waitlist_id) DO NOTHING",
        w["waitlist_id"],
        w["practice_id"],
        w["patient_id"],
        w["service_code"],
        w["practitioner_id"],
        w["joined_at"],
    )


async def lock_waiting(conn: asyncpg.Connection, practice_id: str, booking_id: str) -> list[asyncpg.Record]:
    """Waiting patients of a practice not yet offered this slot, oldest first, locked."""
    return await conn.fetch(
        "SELECT waitlist_id, service_code, practitioner_id, joined_at FROM waitlist w"
        " WHERE practice_id = $1 AND status = 'waiting'"
        " AND NOT EXISTS (SELECT 1 FROM slot_offers o WHERE o.booking_id = $2 AND o.waitlist_id = w.waitlist_id)"
        " ORDER BY joined_at, waitlist_id LIMIT 500 FOR UPDATE SKIP LOCKED",
        practice_id,
        booking_id,
    )


async def add_offer(
    conn: asyncpg.Connection,
    offer_id: str,
    booking_id: str,
    waitlist_id: str,
    offered_at: datetime,
    expires_at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO slot_offers (offer_id, booking_id, waitlist_id, offered_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        offer_id,
        booking_id,
        waitlist_id,
        offered_at,
        expires_at,
    )
    await conn.execute("UPDATE waitlist SET status = 'offered' WHERE waitlist_id = $1", waitlist_id)


async def claim_expired_offers(conn: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    """Open offers past their expiry, marked expired (their patients wait again); skip-locked
    so replicas share the work and never expire one offer twice."""
    rows = await conn.fetch(
        "SELECT offer_id, booking_id, waitlist_id, expires_at FROM slot_offers"
        " WHERE status = 'open' AND expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        limit,
    )
    if rows:
        await conn.execute(
            "UPDATE slot_offers SET status = 'expired' WHERE offer_id = ANY($1::text[])", [r["offer_id"] for r in rows]
        )
        await conn.execute(
            "UPDATE waitlist SET status = 'waiting' WHERE waitlist_id = ANY($1::text[]) AND status = 'offered'",
            [r["waitlist_id"] for r in rows],
        )
    return rows


async def accept_offer_for(
    conn: asyncpg.Connection, patient_id: str, practice_id: str, starts_at: datetime
) -> str | None:
    """A new booking that takes an offered slot closes the offer; returns the offer id."""
    row = await conn.fetchrow(
        "UPDATE slot_offers o SET status = 'accepted' FROM waitlist w, bookings b"
        " WHERE o.status = 'open' AND w.waitlist_id = o.waitlist_id AND b.booking_id = o.booking_id"
        " AND w.patient_id = $1 AND b.practice_id = $2 AND b.starts_at = $3"
        " RETURNING o.offer_id, o.waitlist_id",
        patient_id,
        practice_id,
        starts_at,
    )
    if row is None:
        return None
    await conn.execute("UPDATE waitlist SET status = 'booked' WHERE waitlist_id = $1", row["waitlist_id"])
    return row["offer_id"]


async def mark_released(conn: asyncpg.Connection, booking_id: str, at: datetime) -> bool:
    released = await conn.fetchval(
        "UPDATE bookings SET slot_released_at = $2 WHERE booking_id = $1 AND slot_released_at IS NULL RETURNING true",
        booking_id,
        at,
    )
    return bool(released)


async def future_bookings_of(conn: asyncpg.Connection, professional_id: str, after: datetime) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE professional_id = $1 AND status = 'scheduled'"
        " AND starts_at > $2 ORDER BY starts_at FOR UPDATE",
        professional_id,
        after,
    )


REPORT_GROUPS = {"practice": "practice_id", "practitioner": "practitioner_id", "service": "service_code"}


async def report(
    pool: asyncpg.Pool,
    *,
    group_by: str,
    practice_ids: list[str] | None,  # None: every practice
    starts_from: datetime,
    starts_before: datetime,
) -> list[asyncpg.Record]:
    column = REPORT_GROUPS[group_by]  # a fixed column name, never user text
    return await pool.fetch(
        f"SELECT practice_id, {column} AS key, count(*) AS bookings,"
        " count(*) FILTER (WHERE status = 'cancelled') AS cancelled,"
        " count(*) FILTER (WHERE status = 'cancelled' AND classification = 'timely') AS timely,"
        " count(*) FILTER (WHERE status = 'cancelled' AND classification = 'late') AS late,"
        " count(*) FILTER (WHERE status = 'cancelled' AND classification = 'no_show') AS cancelled_as_no_show,"
        " count(*) FILTER (WHERE status = 'no_show') AS no_shows,"
        " count(*) FILTER (WHERE status = 'completed') AS completed"
        " FROM bookings WHERE starts_at >= $1 AND starts_at < $2 AND ($3::text[] IS NULL OR practice_id = ANY($3))"
        f" GROUP BY practice_id, {column} ORDER BY practice_id, {column}",
        starts_from,
        starts_before,
        practice_ids,
    )


async def record_suspension(conn: asyncpg.Connection, professional_id: str, suspended_at: datetime, cause: str) -> None:
    await conn.execute(
        "INSERT INTO suspended_professionals (professional_id, suspended_at, cause_event_id) VALUES ($1, $2, $3)"
        " ON CONFLICT (professional_id) DO NOTHING",
        professional_id,
        suspended_at,
        cause,
    )


async def suspension_of(conn: asyncpg.Connection, professional_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT suspended_at, cause_event_id FROM suspended_professionals WHERE professional_id = $1", professional_id
    )

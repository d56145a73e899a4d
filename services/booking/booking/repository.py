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
        b["booking_id"], b["practice_id"], b["practitioner_id"], b["service_code"], b["starts_at"],
        b["ends_at"], b["patient_id"], b["patient_portal_account"], b["patient_card_on_file"],
        b["professional_id"], b["series_id"], b["deposit_amount"], b["deposit_currency"],
        b["price_amount"], b["price_currency"],
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
        booking_id, starts_at, ends_at,
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
        booking_ids, status, status_label, classification, closed_at,
    )


async def add_pending_request(
    conn: asyncpg.Connection, request_id: str, booking_id: str, kind: str, request: dict[str, Any]
) -> bool:
    inserted = await conn.fetchval(
        "INSERT INTO pending_requests (request_id, booking_id, kind, request) VALUES ($1, $2, $3, $4::jsonb)"
        " ON CONFLICT (request_id) DO NOTHING RETURNING true",
        request_id, booking_id, kind, json.dumps(request),
    )
    return bool(inserted)


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
        booking_id, at, action, json.dumps(actor) if actor else None, channel, request_id, reason,
        policy_version, json.dumps(detail or {}),
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
    practice_id: str | None,
    status: str | None,
    practitioner_id: str | None,
    starts_from: datetime | None,
    starts_before: datetime | None,
    limit: int,
    offset: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {BOOKING_COLUMNS} FROM bookings"
        " WHERE ($1::text IS NULL OR practice_id = $1) AND ($2::text IS NULL OR status = $2)"
        " AND ($3::text IS NULL OR practitioner_id = $3)"
        " AND ($4::timestamptz IS NULL OR starts_at >= $4) AND ($5::timestamptz IS NULL OR starts_at < $5)"
        " ORDER BY starts_at, booking_id LIMIT $6 OFFSET $7",
        practice_id, status, practitioner_id, starts_from, starts_before, limit, offset,
    )

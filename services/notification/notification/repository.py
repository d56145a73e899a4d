"""Every SQL statement of the notification service, nothing else."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

Conn = asyncpg.Connection | asyncpg.Pool

# --- the contact directory ---------------------------------------------------------------------


async def upsert_practice(conn: asyncpg.Connection, p: dict[str, Any], configured_at: datetime) -> None:
    """Store a practice's contacts; a replayed older configuration never overwrites a newer one."""
    await conn.execute(
        "INSERT INTO practices (practice_id, name, timezone, locale, email, phone, preferred_channel,"
        " notify_practice_on_online_cancel, configured_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        " ON CONFLICT (practice_id) DO UPDATE SET name = EXCLUDED.name, timezone = EXCLUDED.timezone,"
        " locale = EXCLUDED.locale, email = EXCLUDED.email, phone = EXCLUDED.phone,"
        " preferred_channel = EXCLUDED.preferred_channel,"
        " notify_practice_on_online_cancel = EXCLUDED.notify_practice_on_online_cancel,"
        " configured_at = EXCLUDED.configured_at, updated_at = now()"
        " WHERE practices.configured_at <= EXCLUDED.configured_at",
        p["practice_id"], p["name"], p["timezone"], p["locale"], p["email"], p["phone"],
        p["preferred_channel"], p["notify_practice_on_online_cancel"], configured_at,
    )


async def upsert_patient(conn: asyncpg.Connection, p: dict[str, Any], scheduled_at: datetime) -> None:
    """Store the patient of a booking; a replayed older booking.scheduled never overwrites a newer one."""
    await conn.execute(
        "INSERT INTO patients (booking_id, practice_id, patient_id, first_name, email, phone, locale,"
        " starts_at, scheduled_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        " ON CONFLICT (booking_id) DO UPDATE SET practice_id = EXCLUDED.practice_id,"
        " patient_id = EXCLUDED.patient_id, first_name = EXCLUDED.first_name, email = EXCLUDED.email,"
        " phone = EXCLUDED.phone, locale = EXCLUDED.locale, starts_at = EXCLUDED.starts_at,"
        " scheduled_at = EXCLUDED.scheduled_at, updated_at = now()"
        " WHERE patients.scheduled_at <= EXCLUDED.scheduled_at",
        p["booking_id"], p["practice_id"], p["patient_id"], p["first_name"], p["email"], p["phone"],
        p["locale"], p["starts_at"], scheduled_at,
    )


async def reschedule(conn: asyncpg.Connection, booking_id: str, starts_at: datetime) -> None:
    await conn.execute(
        "UPDATE patients SET starts_at = $2, updated_at = now() WHERE booking_id = $1", booking_id, starts_at
    )


async def remember_request(
    conn: asyncpg.Connection, request_id: str, booking_id: str, actor_kind: str, channel: str, requested_at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO cancellation_requests (request_id, booking_id, actor_kind, channel, requested_at)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id) DO NOTHING",
        request_id, booking_id, actor_kind, channel, requested_at,
    )


async def get_practice(conn: Conn, practice_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT practice_id, name, timezone, locale, email, phone, preferred_channel,"
        " notify_practice_on_online_cancel FROM practices WHERE practice_id = $1",
        practice_id,
    )


async def get_patient(conn: Conn, booking_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT booking_id, practice_id, first_name, email, phone, locale, starts_at FROM patients"
        " WHERE booking_id = $1",
        booking_id,
    )


async def requester_kind(conn: Conn, request_id: str) -> str | None:
    return await conn.fetchval("SELECT actor_kind FROM cancellation_requests WHERE request_id = $1", request_id)


# --- the delivery log --------------------------------------------------------------------------

# What the sender needs of a claimed delivery.
_CLAIMED = ", ".join(
    f"d.{column}"
    for column in (
        "notification_id", "event_type", "correlation_id", "booking_id", "practice_id", "recipient",
        "channel", "template", "address", "subject", "body", "attempts",
    )
)


async def record_delivery(conn: asyncpg.Connection, d: dict[str, Any]) -> bool:
    """Record one message to send (or one skipped); False when it is recorded already."""
    inserted = await conn.fetchval(
        "INSERT INTO deliveries (notification_id, event_id, event_type, correlation_id, booking_id,"
        " practice_id, recipient, channel, template, locale, address, subject, body, status, reason,"
        " finished_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
        " CASE WHEN $14 = 'skipped' THEN now() END)"
        " ON CONFLICT (notification_id) DO NOTHING RETURNING true",
        d["notification_id"], d["event_id"], d["event_type"], d["correlation_id"], d["booking_id"],
        d["practice_id"], d["recipient"], d["channel"], d["template"], d["locale"], d["address"],
        d["subject"], d["body"], d["status"], d["reason"],
    )
    return bool(inserted)


async def claim_due(pool: asyncpg.Pool, limit: int, lease_seconds: float) -> list[asyncpg.Record]:
    """Claim up to `limit` pending deliveries that are due, counting the attempt.

    SKIP LOCKED: replicas claiming at the same moment take disjoint rows, never the same one.
    The lease (`next_attempt_at` pushed forward) keeps the row from being claimed again while
    it is being sent; if this process dies mid-send, the row is due again when the lease ends.
    """
    return await pool.fetch(
        "UPDATE deliveries d SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)"
        " FROM (SELECT notification_id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= now()"
        " ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due"
        f" WHERE d.notification_id = due.notification_id RETURNING {_CLAIMED}",
        limit,
        lease_seconds,
    )


async def mark_sent(conn: asyncpg.Connection, notification_id: uuid.UUID) -> bool:
    """The provider accepted it. A success is a fact: recorded whoever holds the claim now."""
    updated = await conn.fetchval(
        "UPDATE deliveries SET status = 'sent', reason = NULL, finished_at = now()"
        " WHERE notification_id = $1 AND status = 'pending' RETURNING true",
        notification_id,
    )
    return bool(updated)


async def mark_failed(conn: asyncpg.Connection, notification_id: uuid.UUID, attempts: int, reason: str) -> bool:
    """Out of tries, or a failure no retry can fix; only by the holder of the latest claim."""
    updated = await conn.fetchval(
        "UPDATE deliveries SET status = 'failed', reason = $3, finished_at = now()"
        " WHERE notification_id = $1 AND status = 'pending' AND attempts = $2 RETURNING true",
        notification_id, attempts, reason,
    )
    return bool(updated)


async def schedule_retry(
    conn: asyncpg.Connection, notification_id: uuid.UUID, attempts: int, delay_seconds: float, reason: str
) -> bool:
    updated = await conn.fetchval(
        "UPDATE deliveries SET reason = $3, next_attempt_at = now() + make_interval(secs => $4)"
        " WHERE notification_id = $1 AND status = 'pending' AND attempts = $2 RETURNING true",
        notification_id, attempts, reason, delay_seconds,
    )
    return bool(updated)


async def deliveries_for_booking(pool: Conn, booking_id: str) -> list[asyncpg.Record]:
    """The delivery log of one booking, without addresses or message text."""
    return await pool.fetch(
        "SELECT notification_id, event_id, event_type, recipient, channel, template, locale, status,"
        " reason, attempts, next_attempt_at, created_at, finished_at"
        " FROM deliveries WHERE booking_id = $1 ORDER BY created_at, event_id, recipient, channel",
        booking_id,
    )

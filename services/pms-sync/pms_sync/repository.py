"""Every SQL statement of the pms-sync service, nothing else."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

Conn = asyncpg.Connection | asyncpg.Pool

# --- the integration registry and the remembered requests -------------------------------------


async def configure_integration(
    conn: asyncpg.Connection, practice_id: str, integration: str, configured_at: datetime
) -> None:
    """A replayed older configuration never overwrites a newer one."""
    await conn.execute(
        "INSERT INTO integrations (practice_id, integration, configured_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (practice_id) DO UPDATE SET integration = EXCLUDED.integration,"
        " configured_at = EXCLUDED.configured_at, updated_at = now()"
        " WHERE integrations.configured_at <= EXCLUDED.configured_at",
        practice_id,
        integration,
        configured_at,
    )


async def integration_of(conn: Conn, practice_id: str) -> str | None:
    return await conn.fetchval("SELECT integration FROM integrations WHERE practice_id = $1", practice_id)


async def remember_request(
    conn: asyncpg.Connection, request_id: str, booking_id: str, kind: str, actor: dict[str, Any], chart_note: str | None
) -> None:
    await conn.execute(
        "INSERT INTO requests (request_id, booking_id, kind, actor, chart_note) VALUES ($1, $2, $3, $4::jsonb, $5)"
        " ON CONFLICT (request_id) DO NOTHING",
        request_id,
        booking_id,
        kind,
        json.dumps(actor),
        chart_note,
    )


async def get_request(conn: Conn, request_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT request_id, booking_id, kind, actor::text AS actor, chart_note FROM requests WHERE request_id = $1",
        request_id,
    )


# --- syncs ---------------------------------------------------------------------------------------

SYNC_COLUMNS = (
    "sync_id, booking_id, practice_id, request_id, integration, action, topic, command::text AS command,"
    " correlation_id, status, attempts, next_retry_at, error, external_ref, created_at, finished_at"
)


async def add_sync(
    conn: asyncpg.Connection,
    *,
    sync_id: str,
    booking_id: str,
    practice_id: str,
    request_id: str,
    integration: str,
    action: str,
    topic: str,
    command: dict[str, Any],
    correlation_id: str | None,
    waiting: bool,
    wait_seconds: float,
) -> bool:
    """Record a new command: sent now (attempt 1, `wait_seconds` for its ack) or waiting for its
    upstream request (attempt 0, for at most `wait_seconds`); False when it exists already."""
    inserted = await conn.fetchval(
        "INSERT INTO syncs (sync_id, booking_id, practice_id, request_id, integration, action, topic, command,"
        " correlation_id, status, attempts, next_retry_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11, now() + make_interval(secs => $12))"
        " ON CONFLICT (sync_id) DO NOTHING RETURNING true",
        sync_id,
        booking_id,
        practice_id,
        request_id,
        integration,
        action,
        topic,
        json.dumps(command),
        correlation_id,
        "waiting" if waiting else "sent",
        0 if waiting else 1,
        wait_seconds,
    )
    return bool(inserted)


async def lock_sync(conn: asyncpg.Connection, sync_id: str) -> asyncpg.Record | None:
    """The sync, locked for this transaction: an ack and a resend of it never interleave."""
    return await conn.fetchrow(f"SELECT {SYNC_COLUMNS} FROM syncs WHERE sync_id = $1 FOR UPDATE", sync_id)


async def lock_due_syncs(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """Syncs whose wait is over (for an ack, or for their request), locked; SKIP LOCKED so
    replicas take disjoint rows and never wait on a row an ack or a request is settling."""
    return await conn.fetch(
        f"SELECT {SYNC_COLUMNS} FROM syncs WHERE status IN ('waiting', 'sent') AND next_retry_at <= now()"
        " ORDER BY next_retry_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )


async def open_syncs(conn: Conn) -> list[asyncpg.Record]:
    """Syncs not yet acknowledged (waiting or sent), per integration, with the oldest one's age in
    seconds: the rows of the partial index `syncs_due`, so cheap at any table size."""
    return await conn.fetch(
        "SELECT integration, count(*) AS open, extract(epoch FROM now() - min(created_at)) AS oldest_seconds"
        " FROM syncs WHERE status IN ('waiting', 'sent') GROUP BY integration"
    )


async def lock_waiting_syncs(conn: asyncpg.Connection, request_id: str) -> list[asyncpg.Record]:
    """The commands of one request still waiting for it (a series has several), locked."""
    return await conn.fetch(
        f"SELECT {SYNC_COLUMNS} FROM syncs WHERE request_id = $1 AND status = 'waiting' ORDER BY booking_id FOR UPDATE",
        request_id,
    )


async def mark_first_sent(
    conn: asyncpg.Connection, sync_id: str, command: dict[str, Any], ack_wait_seconds: float
) -> None:
    """A waiting command goes out: completed from its request, attempt 1."""
    await conn.execute(
        "UPDATE syncs SET command = $2::jsonb, status = 'sent', attempts = 1,"
        " next_retry_at = now() + make_interval(secs => $3) WHERE sync_id = $1",
        sync_id,
        json.dumps(command),
        ack_wait_seconds,
    )


async def mark_resent(conn: asyncpg.Connection, sync_id: str, attempts: int, ack_wait_seconds: float) -> None:
    await conn.execute(
        "UPDATE syncs SET attempts = $2, next_retry_at = now() + make_interval(secs => $3) WHERE sync_id = $1",
        sync_id,
        attempts,
        ack_wait_seconds,
    )


async def complete_sync(conn: asyncpg.Connection, sync_id: str, external_ref: str | None) -> None:
    await conn.execute(
        "UPDATE syncs SET status = 'completed', external_ref = $2, next_retry_at = NULL, finished_at = now()"
        " WHERE sync_id = $1",
        sync_id,
        external_ref,
    )


async def fail_sync(conn: asyncpg.Connection, sync_id: str, error: str) -> None:
    await conn.execute(
        "UPDATE syncs SET status = 'failed', error = $2, next_retry_at = NULL, finished_at = now() WHERE sync_id = $1",
        sync_id,
        error,
    )


async def syncs_for_booking(conn: Conn, booking_id: str, *, practice_ids: list[str] | None) -> list[asyncpg.Record]:
    """The syncs of one booking of those practices (None: any practice), without the command
    (it may hold a chart note)."""
    return await conn.fetch(
        "SELECT sync_id, booking_id, practice_id, request_id, integration, action, topic, status, attempts,"
        " next_retry_at, error, external_ref, created_at, finished_at"
        " FROM syncs WHERE booking_id = $1 AND ($2::text[] IS NULL OR practice_id = ANY($2))"
        " ORDER BY created_at, sync_id",
        booking_id,
        practice_ids,
    )


# --- manual updates ------------------------------------------------------------------------------


async def add_manual_update(
    conn: asyncpg.Connection,
    *,
    booking_id: str,
    practice_id: str,
    integration: str,
    action: str,
    message: str,
    sync_id: str | None,
) -> None:
    await conn.execute(
        "INSERT INTO manual_updates (booking_id, practice_id, integration, action, message, sync_id)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        booking_id,
        practice_id,
        integration,
        action,
        message,
        sync_id,
    )


async def manual_updates(
    conn: Conn, *, practice_ids: list[str] | None, limit: int, offset: int
) -> list[asyncpg.Record]:
    """What those practices (None: every practice) must change in their PMS by hand, newest first."""
    return await conn.fetch(
        "SELECT id, booking_id, practice_id, integration, action, message, sync_id, created_at"
        " FROM manual_updates WHERE ($1::text[] IS NULL OR practice_id = ANY($1))"
        " ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
        practice_ids,
        limit,
        offset,
    )

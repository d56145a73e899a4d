"""Every SQL statement of the pms-sync service, nothing else.

The functions the consumed events reach take a whole set of records (`integrations_of`,
`remember_requests`, `add_syncs`, ...): one statement per set, whatever its size."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from shared.db import columns

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


async def integrations_of(conn: Conn, practice_ids: list[str]) -> dict[str, str]:
    """The integration of each of those practices that has one configured."""
    rows = await conn.fetch(
        "SELECT practice_id, integration FROM integrations WHERE practice_id = ANY($1::text[])", practice_ids
    )
    return {row["practice_id"]: row["integration"] for row in rows}


async def remember_requests(conn: asyncpg.Connection, requests: list[dict[str, Any]]) -> None:
    """Each request (request_id, booking_id, kind, actor, chart_note) once: the first one
    remembered under an id stays, a replay changes nothing."""
    if not requests:
        return
    await conn.execute(
        "INSERT INTO requests (request_id, booking_id, kind, actor, chart_note)"
        " SELECT r.request_id, r.booking_id, r.kind, r.actor::jsonb, r.chart_note"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])"
        " WITH ORDINALITY AS r(request_id, booking_id, kind, actor, chart_note, n)"
        " ORDER BY r.n ON CONFLICT (request_id) DO NOTHING",
        *columns(requests, "request_id", "booking_id", "kind"),
        [json.dumps(r["actor"]) for r in requests],
        [r["chart_note"] for r in requests],
    )


REQUEST_COLUMNS = "request_id, booking_id, kind, actor::text AS actor, chart_note"


async def get_request(conn: Conn, request_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {REQUEST_COLUMNS} FROM requests WHERE request_id = $1", request_id)


async def get_requests(conn: Conn, request_ids: list[str]) -> dict[str, asyncpg.Record]:
    """Those of the requests remembered, by id."""
    if not request_ids:
        return {}
    rows = await conn.fetch(f"SELECT {REQUEST_COLUMNS} FROM requests WHERE request_id = ANY($1::text[])", request_ids)
    return {row["request_id"]: row for row in rows}


# --- syncs ---------------------------------------------------------------------------------------

SYNC_COLUMNS = (
    "sync_id, booking_id, practice_id, request_id, integration, action, topic, command::text AS command,"
    " correlation_id, status, attempts, next_retry_at, error, external_ref, created_at, finished_at"
)


async def add_syncs(conn: asyncpg.Connection, syncs: list[dict[str, Any]]) -> set[str]:
    """Record new commands (sync_id, booking_id, practice_id, request_id, integration, action,
    topic, command, correlation_id, waiting, wait_seconds): each sent now (attempt 1,
    `wait_seconds` for its ack) or waiting for its upstream request (attempt 0, for at most
    `wait_seconds`). Returns the ids inserted; one that exists already is left as it is."""
    if not syncs:
        return set()
    rows = await conn.fetch(
        "INSERT INTO syncs (sync_id, booking_id, practice_id, request_id, integration, action, topic, command,"
        " correlation_id, status, attempts, next_retry_at)"
        " SELECT s.sync_id, s.booking_id, s.practice_id, s.request_id, s.integration, s.action, s.topic,"
        " s.command::jsonb, s.correlation_id, s.status, s.attempts, now() + make_interval(secs => s.wait_seconds)"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
        " $8::text[], $9::text[], $10::text[], $11::int[], $12::float8[]) WITH ORDINALITY"
        " AS s(sync_id, booking_id, practice_id, request_id, integration, action, topic, command, correlation_id,"
        " status, attempts, wait_seconds, n)"
        " ORDER BY s.n ON CONFLICT (sync_id) DO NOTHING RETURNING sync_id",
        *columns(syncs, "sync_id", "booking_id", "practice_id", "request_id", "integration", "action", "topic"),
        [json.dumps(s["command"]) for s in syncs],
        [s["correlation_id"] for s in syncs],
        ["waiting" if s["waiting"] else "sent" for s in syncs],
        [0 if s["waiting"] else 1 for s in syncs],
        [s["wait_seconds"] for s in syncs],
    )
    return {row["sync_id"] for row in rows}


async def lock_syncs(conn: asyncpg.Connection, sync_ids: list[str]) -> dict[str, asyncpg.Record]:
    """Those syncs, by id, locked for this transaction (in id order, so two replicas never wait on
    each other in a circle): an ack and a resend of one never interleave."""
    rows = await conn.fetch(
        f"SELECT {SYNC_COLUMNS} FROM syncs WHERE sync_id = ANY($1::text[]) ORDER BY sync_id FOR UPDATE", sync_ids
    )
    return {row["sync_id"]: row for row in rows}


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


async def lock_waiting_syncs(conn: asyncpg.Connection, request_ids: list[str]) -> list[asyncpg.Record]:
    """The commands of those requests still waiting for them (a series has several), locked,
    in (request, booking) order."""
    if not request_ids:
        return []
    return await conn.fetch(
        f"SELECT {SYNC_COLUMNS} FROM syncs WHERE request_id = ANY($1::text[]) AND status = 'waiting'"
        " ORDER BY request_id, booking_id, sync_id FOR UPDATE",
        request_ids,
    )


async def mark_first_sent(conn: asyncpg.Connection, sends: list[tuple[str, dict[str, Any], float]]) -> None:
    """Waiting commands go out (sync_id, the command completed from its request, seconds to wait
    for its ack): attempt 1."""
    if not sends:
        return
    await conn.execute(
        "UPDATE syncs SET command = s.command::jsonb, status = 'sent', attempts = 1,"
        " next_retry_at = now() + make_interval(secs => s.wait_seconds)"
        " FROM unnest($1::text[], $2::text[], $3::float8[]) AS s(sync_id, command, wait_seconds)"
        " WHERE syncs.sync_id = s.sync_id",
        [sync_id for sync_id, _, _ in sends],
        [json.dumps(command) for _, command, _ in sends],
        [wait for _, _, wait in sends],
    )


async def mark_resent(conn: asyncpg.Connection, sync_id: str, attempts: int, ack_wait_seconds: float) -> None:
    await conn.execute(
        "UPDATE syncs SET attempts = $2, next_retry_at = now() + make_interval(secs => $3) WHERE sync_id = $1",
        sync_id,
        attempts,
        ack_wait_seconds,
    )


async def complete_syncs(conn: asyncpg.Connection, completed: list[tuple[str, str | None]]) -> None:
    """Those syncs (sync_id, the PMS's own reference) acknowledged: done."""
    if not completed:
        return
    await conn.execute(
        "UPDATE syncs SET status = 'completed', external_ref = c.external_ref, next_retry_at = NULL,"
        " finished_at = now() FROM unnest($1::text[], $2::text[]) AS c(sync_id, external_ref)"
        " WHERE syncs.sync_id = c.sync_id",
        [sync_id for sync_id, _ in completed],
        [external_ref for _, external_ref in completed],
    )


async def fail_syncs(conn: asyncpg.Connection, failed: list[tuple[str, str]]) -> None:
    """Those syncs (sync_id, why) failed for good."""
    if not failed:
        return
    await conn.execute(
        "UPDATE syncs SET status = 'failed', error = f.error, next_retry_at = NULL, finished_at = now()"
        " FROM unnest($1::text[], $2::text[]) AS f(sync_id, error) WHERE syncs.sync_id = f.sync_id",
        [sync_id for sync_id, _ in failed],
        [error for _, error in failed],
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


async def add_manual_updates(conn: asyncpg.Connection, updates: list[dict[str, Any]]) -> None:
    """What staff must change by hand (booking_id, practice_id, integration, action, message,
    sync_id), in the order given."""
    if not updates:
        return
    await conn.execute(
        "INSERT INTO manual_updates (booking_id, practice_id, integration, action, message, sync_id)"
        " SELECT m.booking_id, m.practice_id, m.integration, m.action, m.message, m.sync_id"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])"
        " WITH ORDINALITY AS m(booking_id, practice_id, integration, action, message, sync_id, n) ORDER BY m.n",
        *columns(updates, "booking_id", "practice_id", "integration", "action", "message", "sync_id"),
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

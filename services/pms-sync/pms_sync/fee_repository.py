"""The SQL of pms.update_fee (second release): what billing said of each charge, where the
booking's cancellation or no-show was synced, and superseding a fee update not acknowledged yet.
The sync rows themselves are written by repository.py's `add_sync`, like every command."""

from __future__ import annotations

import json
from typing import Any

import asyncpg


async def lock_charge(conn: asyncpg.Connection, charge_id: str) -> asyncpg.Record | None:
    """The charge as billing last announced it, locked: two of its events never interleave."""
    return await conn.fetchrow(
        "SELECT charge_id, booking_id, state, fee::text AS fee FROM charges WHERE charge_id = $1 FOR UPDATE",
        charge_id,
    )


async def save_charge(
    conn: asyncpg.Connection, charge_id: str, booking_id: str, state: str, fee: dict[str, Any] | None
) -> None:
    await conn.execute(
        "INSERT INTO charges (charge_id, booking_id, state, fee) VALUES ($1, $2, $3, $4::jsonb)"
        " ON CONFLICT (charge_id) DO UPDATE SET state = EXCLUDED.state, fee = EXCLUDED.fee, updated_at = now()",
        charge_id,
        booking_id,
        state,
        json.dumps(fee) if fee is not None else None,
    )


async def synced_booking(conn: asyncpg.Connection, booking_id: str) -> asyncpg.Record | None:
    """Where the booking's cancellation (or no-show) went: its practice, integration and topic.
    None: never synced (integration `none` or `manual`, or not read yet)."""
    return await conn.fetchrow(
        "SELECT practice_id, integration, topic FROM syncs"
        " WHERE booking_id = $1 AND action IN ('cancel_booking', 'record_no_show') ORDER BY created_at LIMIT 1",
        booking_id,
    )


async def supersede_fee_updates(conn: asyncpg.Connection, booking_id: str, keep_sync_id: str) -> int:
    """The booking's fee updates not acknowledged yet, but `keep_sync_id`, end `superseded`: a
    resend of an older fee must never land after the newer one."""
    status = await conn.execute(
        "UPDATE syncs SET status = 'superseded', next_retry_at = NULL, finished_at = now()"
        " WHERE booking_id = $1 AND action = 'update_fee' AND status IN ('waiting', 'sent') AND sync_id <> $2",
        booking_id,
        keep_sync_id,
    )
    return int(status.split()[-1])

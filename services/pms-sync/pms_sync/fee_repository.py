"""The SQL of pms.update_fee (second release): what billing said of each charge, where the
booking's cancellation or no-show was synced, and superseding a fee update not acknowledged yet.
The sync rows themselves are written by repository.py's `add_syncs`, like every command.

Each function takes a whole set of charges or bookings (fees.py's handlers are set-based): one
statement per set, whatever its size."""

from __future__ import annotations

import json
from typing import Any

import asyncpg


async def lock_charges(conn: asyncpg.Connection, charge_ids: list[str]) -> dict[str, asyncpg.Record]:
    """The charges as billing last announced them, by id, locked (in id order, so two replicas
    never wait on each other in a circle): two events of one charge never interleave."""
    rows = await conn.fetch(
        "SELECT charge_id, booking_id, state, fee::text AS fee FROM charges WHERE charge_id = ANY($1::text[])"
        " ORDER BY charge_id FOR UPDATE",
        charge_ids,
    )
    return {row["charge_id"]: row for row in rows}


async def save_charges(conn: asyncpg.Connection, charges: list[tuple[str, str, str, dict[str, Any] | None]]) -> None:
    """Each charge (charge_id, booking_id, state, fee) as billing now says it; the ids are distinct."""
    if not charges:
        return
    await conn.execute(
        "INSERT INTO charges (charge_id, booking_id, state, fee)"
        " SELECT c.charge_id, c.booking_id, c.state, c.fee::jsonb"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS c(charge_id, booking_id, state, fee)"
        " ON CONFLICT (charge_id) DO UPDATE SET state = EXCLUDED.state, fee = EXCLUDED.fee, updated_at = now()",
        [charge_id for charge_id, _, _, _ in charges],
        [booking_id for _, booking_id, _, _ in charges],
        [state for _, _, state, _ in charges],
        [json.dumps(fee) if fee is not None else None for _, _, _, fee in charges],
    )


async def synced_bookings(conn: asyncpg.Connection, booking_ids: list[str]) -> dict[str, asyncpg.Record]:
    """Where each booking's cancellation (or no-show) went: its practice, integration and topic,
    by booking. A booking missing was never synced (integration `none` or `manual`, or not read yet)."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (booking_id) booking_id, practice_id, integration, topic FROM syncs"
        " WHERE booking_id = ANY($1::text[]) AND action IN ('cancel_booking', 'record_no_show')"
        " ORDER BY booking_id, created_at",
        booking_ids,
    )
    return {row["booking_id"]: row for row in rows}


async def supersede_fee_updates(conn: asyncpg.Connection, keep: list[tuple[str, str]]) -> int:
    """For each (booking_id, keep_sync_id), the booking's fee updates not acknowledged yet but
    that one end `superseded`: a resend of an older fee must never land after the newer one. The
    bookings are distinct. Returns how many ended."""
    if not keep:
        return 0
    status = await conn.execute(
        "UPDATE syncs SET status = 'superseded', next_retry_at = NULL, finished_at = now()"
        " FROM unnest($1::text[], $2::text[]) AS k(booking_id, sync_id)"
        " WHERE syncs.booking_id = k.booking_id AND syncs.action = 'update_fee'"
        " AND syncs.status IN ('waiting', 'sent') AND syncs.sync_id <> k.sync_id",
        [booking_id for booking_id, _ in keep],
        [sync_id for _, sync_id in keep],
    )
    return int(status.split()[-1])

"""Every SQL statement of the scoring service, nothing else."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from .domain import Hold

HOLD_COLUMNS = (
    "hold_id::text AS hold_id, professional_id, booking_id, cause, occurred_at, starts_at, ends_at,"
    " status, lift_cause, lifted_at"
)


async def lock_professional(conn: asyncpg.Connection, professional_id: str) -> asyncpg.Record:
    """The professional's row, created on first sight and locked for this transaction, so every
    change of one professional's ledger and holds is serialised (across replicas too)."""
    await conn.execute(
        "INSERT INTO professionals (professional_id) VALUES ($1) ON CONFLICT (professional_id) DO NOTHING",
        professional_id,
    )
    return await conn.fetchrow(
        "SELECT professional_id, suspended_at, suspension_holds FROM professionals"
        " WHERE professional_id = $1 FOR UPDATE",
        professional_id,
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
        entry_id, professional_id, booking_id, delta, cause, occurred_at, event_id,
    )
    return bool(inserted)


async def ledger_deltas(conn: asyncpg.Connection | asyncpg.Pool, professional_id: str) -> list[int]:
    rows = await conn.fetch("SELECT delta FROM score_ledger WHERE professional_id = $1", professional_id)
    return [r["delta"] for r in rows]


async def holds_of(conn: asyncpg.Connection, professional_id: str) -> list[Hold]:
    rows = await conn.fetch(
        f"SELECT {HOLD_COLUMNS} FROM holds WHERE professional_id = $1 ORDER BY occurred_at, hold_id",
        professional_id,
    )
    return [
        Hold(
            hold_id=r["hold_id"],
            status=r["status"],
            occurred_at=r["occurred_at"],
            starts_at=r["starts_at"],
            ends_at=r["ends_at"],
            lift_cause=r["lift_cause"],
        )
        for r in rows
    ]


async def add_hold(
    conn: asyncpg.Connection,
    *,
    hold_id: str,
    professional_id: str,
    booking_id: str,
    cause: str,
    occurred_at: datetime,
    starts_at: datetime,
    ends_at: datetime,
) -> bool:
    inserted = await conn.fetchval(
        "INSERT INTO holds (hold_id, professional_id, booking_id, cause, occurred_at, starts_at, ends_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING true",
        hold_id, professional_id, booking_id, cause, occurred_at, starts_at, ends_at,
    )
    return bool(inserted)


async def suspend(conn: asyncpg.Connection, professional_id: str, *, at: datetime, hold_ids: list[str]) -> bool:
    """Mark the account suspended; False when it was suspended already (suspension happens once)."""
    updated = await conn.fetchval(
        "UPDATE professionals SET suspended_at = $2, suspension_holds = $3::text[]"
        " WHERE professional_id = $1 AND suspended_at IS NULL RETURNING true",
        professional_id, at, hold_ids,
    )
    return bool(updated)


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
        professional_id, limit, offset,
    )


async def holds_for_read(pool: asyncpg.Pool, professional_id: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"SELECT {HOLD_COLUMNS}, placed_at FROM holds WHERE professional_id = $1 ORDER BY starts_at, hold_id",
        professional_id,
    )

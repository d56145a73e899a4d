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


async def settings_history(pool: asyncpg.Pool, practice_id: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT version, settings::text AS settings, name, timezone, locale, configured_at"
        " FROM practice_settings WHERE practice_id = $1 ORDER BY version",
        practice_id,
    )


async def decisions_for_booking(pool: asyncpg.Pool, booking_id: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT request_id, policy_version, allowed, classification, explanation, decision::text AS decision,"
        " decided_at FROM decisions WHERE booking_id = $1 ORDER BY decided_at",
        booking_id,
    )

"""Every SQL statement of the billing service, nothing else."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

CHARGE_COLUMNS = (
    "charge_id::text AS charge_id, booking_id, request_id, practice_id, patient_id, kind, amount_minor,"
    " currency, code, code_system, charge_card, status, failure_reason, policy_version, occurred_at,"
    " correlation_id, capture_attempts, first_capture_at, created_at, updated_at"
)

PAYMENT_COLUMNS = (
    "p.payment_id::text AS payment_id, p.charge_id::text AS charge_id, p.status, p.amount_minor, p.currency,"
    " p.gateway, p.gateway_ref, p.failure_reason, p.recorded_at"
)


async def lock_booking_billing(conn: asyncpg.Connection, booking_id: str) -> None:
    """Serialise billing writes of one booking for this transaction (the booking's charges and
    deposit have no row of their own to lock before the first one exists)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"billing:booking:{booking_id}")


async def insert_charge(conn: asyncpg.Connection, c: dict[str, Any]) -> bool:
    """Store a new charge; False when it exists already (the same request delivered again)."""
    inserted = await conn.fetchval(
        "INSERT INTO charges (charge_id, booking_id, request_id, practice_id, patient_id, kind, amount_minor,"
        " currency, code, code_system, charge_card, status, policy_version, occurred_at, correlation_id,"
        " next_capture_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
        " CASE WHEN $12 = 'pending_capture' THEN now() END)"
        " ON CONFLICT DO NOTHING RETURNING true",
        c["charge_id"],
        c["booking_id"],
        c["request_id"],
        c["practice_id"],
        c["patient_id"],
        c["kind"],
        c["amount_minor"],
        c["currency"],
        c["code"],
        c["code_system"],
        c["charge_card"],
        c["status"],
        c["policy_version"],
        c["occurred_at"],
        c["correlation_id"],
    )
    return bool(inserted)


async def insert_deposit_outcome(conn: asyncpg.Connection, d: dict[str, Any]) -> bool:
    """Store what became of a deposit; False when it was recorded already."""
    inserted = await conn.fetchval(
        "INSERT INTO deposit_outcomes (booking_id, request_id, practice_id, patient_id, outcome, amount_minor,"
        " currency, credit_note_id, occurred_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        " ON CONFLICT DO NOTHING RETURNING true",
        d["booking_id"],
        d["request_id"],
        d["practice_id"],
        d["patient_id"],
        d["outcome"],
        d["amount_minor"],
        d["currency"],
        d["credit_note_id"],
        d["occurred_at"],
    )
    return bool(inserted)


async def claim_captures(
    conn: asyncpg.Connection, *, limit: int, lease_seconds: float, saved_cards: bool = True
) -> list[asyncpg.Record]:
    """Take up to `limit` charges due for capture and lease them: until the lease ends no other
    replica takes them; when this one dies mid-call, another takes them after it (and asks the
    gateway again with the same idempotency key). Each retry leases longer (backoff, 1 h cap).
    `saved_cards=False` (the sandbox) leaves the charges of patients with a saved card alone."""
    return await conn.fetch(
        f"UPDATE charges SET capture_attempts = capture_attempts + 1,"
        " first_capture_at = coalesce(first_capture_at, now()),"
        " next_capture_at = now() + make_interval(secs => least(3600, $2 * power(2, least(capture_attempts, 12))))"
        " WHERE charge_id IN ("
        "   SELECT charge_id FROM charges c WHERE status = 'pending_capture' AND next_capture_at <= now()"
        "   AND ($3 OR NOT EXISTS (SELECT 1 FROM patient_cards pc WHERE pc.patient_id = c.patient_id))"
        "   ORDER BY next_capture_at, charge_id LIMIT $1 FOR UPDATE SKIP LOCKED)"
        f" RETURNING {CHARGE_COLUMNS}",
        limit,
        lease_seconds,
        saved_cards,
    )


async def lock_charge(conn: asyncpg.Connection, charge_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {CHARGE_COLUMNS} FROM charges WHERE charge_id = $1 FOR UPDATE", charge_id)


async def cards_of_patients(conn: asyncpg.Connection, patient_ids: list[str]) -> dict[str, asyncpg.Record]:
    """The saved card (Stripe customer and payment method) of each patient that has one."""
    rows = await conn.fetch(
        "SELECT patient_id, stripe_customer_id, stripe_payment_method_id FROM patient_cards"
        " WHERE patient_id = ANY($1::text[])",
        patient_ids,
    )
    return {r["patient_id"]: r for r in rows}


async def adjust_charge(
    conn: asyncpg.Connection, charge_id: str, *, amount_minor: int, code: str, code_system: str
) -> None:
    await conn.execute(
        "UPDATE charges SET amount_minor = $2, code = $3, code_system = $4, updated_at = now() WHERE charge_id = $1",
        charge_id,
        amount_minor,
        code,
        code_system,
    )


async def record_adjustment_request(
    conn: asyncpg.Connection,
    *,
    request_id: str,
    charge_id: str,
    practice_id: str | None,
    booking_id: str | None,
    actor: str,
    actor_roles: list[str],
    outcome: str,
    reason: str | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    requested_at: datetime,
) -> bool:
    """Record the one answer to an adjustment request; False when it was answered already."""
    inserted = await conn.fetchval(
        "INSERT INTO charge_adjustments (request_id, charge_id, practice_id, booking_id, actor, actor_roles, outcome,"
        " reason, before, after, requested_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10::jsonb, $11)"
        " ON CONFLICT (request_id) DO NOTHING RETURNING true",
        request_id,
        charge_id,
        practice_id,
        booking_id,
        actor,
        actor_roles,
        outcome,
        reason,
        json.dumps(before) if before is not None else None,
        json.dumps(after) if after is not None else None,
        requested_at,
    )
    return bool(inserted)


async def record_payment(
    conn: asyncpg.Connection,
    *,
    payment_id: str,
    charge_id: str,
    status: str,
    amount_minor: int,
    currency: str,
    gateway: str,
    gateway_ref: str,
    idempotency_key: str,
    failure_reason: str | None,
    charge_status: str,
) -> None:
    await conn.execute(
        "INSERT INTO payments (payment_id, charge_id, status, amount_minor, currency, gateway, gateway_ref,"
        " idempotency_key, failure_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        payment_id,
        charge_id,
        status,
        amount_minor,
        currency,
        gateway,
        gateway_ref,
        idempotency_key,
        failure_reason,
    )
    await conn.execute(
        "UPDATE charges SET status = $2, failure_reason = $3, next_capture_at = NULL, updated_at = now()"
        " WHERE charge_id = $1",
        charge_id,
        charge_status,
        failure_reason,
    )


async def audit(
    conn: asyncpg.Connection,
    *,
    at: datetime,
    actor: str,
    action: str,
    practice_id: str,
    booking_id: str,
    reason: str,
    charge_id: str | None = None,
    amount_minor: int | None = None,
    currency: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO billing_audit (at, actor, action, practice_id, booking_id, charge_id, amount_minor, currency,"
        " reason, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb)",
        at,
        actor,
        action,
        practice_id,
        booking_id,
        charge_id,
        amount_minor,
        currency,
        reason,
        json.dumps(detail or {}),
    )


# --- reads: each filtered by the caller's practices (None: every practice) ------------------


async def charges_of_patient(
    pool: asyncpg.Pool, patient_id: str, *, practice_ids: list[str] | None, limit: int, offset: int
) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"SELECT {CHARGE_COLUMNS} FROM charges WHERE patient_id = $1 AND ($2::text[] IS NULL OR practice_id = ANY($2))"
        " ORDER BY occurred_at, charge_id LIMIT $3 OFFSET $4",
        patient_id,
        practice_ids,
        limit,
        offset,
    )


async def payments_of_charges(
    pool: asyncpg.Pool, charge_ids: list[str], *, practice_ids: list[str] | None
) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"SELECT {PAYMENT_COLUMNS}, c.booking_id FROM payments p JOIN charges c ON c.charge_id = p.charge_id"
        " WHERE p.charge_id = ANY($1::uuid[]) AND ($2::text[] IS NULL OR c.practice_id = ANY($2))"
        " ORDER BY p.recorded_at, p.payment_id",
        charge_ids,
        practice_ids,
    )


async def charges_of_booking(
    pool: asyncpg.Pool, booking_id: str, *, practice_ids: list[str] | None
) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"SELECT {CHARGE_COLUMNS} FROM charges WHERE booking_id = $1 AND ($2::text[] IS NULL OR practice_id = ANY($2))"
        " ORDER BY occurred_at, charge_id",
        booking_id,
        practice_ids,
    )


async def payments_of_booking(
    pool: asyncpg.Pool, booking_id: str, *, practice_ids: list[str] | None
) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"SELECT {PAYMENT_COLUMNS}, c.booking_id FROM payments p JOIN charges c ON c.charge_id = p.charge_id"
        " WHERE c.booking_id = $1 AND ($2::text[] IS NULL OR c.practice_id = ANY($2))"
        " ORDER BY p.recorded_at, p.payment_id",
        booking_id,
        practice_ids,
    )


async def deposits_of_booking(
    pool: asyncpg.Pool, booking_id: str, *, practice_ids: list[str] | None
) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT booking_id, request_id, practice_id, patient_id, outcome, amount_minor, currency,"
        " credit_note_id::text AS credit_note_id, occurred_at, recorded_at FROM deposit_outcomes"
        " WHERE booking_id = $1 AND ($2::text[] IS NULL OR practice_id = ANY($2)) ORDER BY occurred_at, request_id",
        booking_id,
        practice_ids,
    )


async def adjustments_of_booking(
    pool: asyncpg.Pool, booking_id: str, *, practice_ids: list[str] | None
) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT request_id, charge_id, actor, actor_roles, outcome, reason, before::text AS before,"
        " after::text AS after, requested_at, recorded_at FROM charge_adjustments"
        " WHERE booking_id = $1 AND ($2::text[] IS NULL OR practice_id = ANY($2)) ORDER BY requested_at, request_id",
        booking_id,
        practice_ids,
    )


async def audit_of_booking(
    pool: asyncpg.Pool, booking_id: str, *, practice_ids: list[str] | None
) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT seq, at, actor, action, charge_id::text AS charge_id, amount_minor, currency, reason,"
        " detail::text AS detail, recorded_at FROM billing_audit"
        " WHERE booking_id = $1 AND ($2::text[] IS NULL OR practice_id = ANY($2)) ORDER BY seq",
        booking_id,
        practice_ids,
    )


async def balances_of_practice(pool: asyncpg.Pool, practice_id: str) -> list[asyncpg.Record]:
    """What is owed to the practice, per currency (amounts in different currencies never add up)."""
    return await pool.fetch(
        "SELECT currency,"
        " coalesce(sum(amount_minor) FILTER (WHERE status = 'outstanding'), 0)::bigint AS outstanding_minor,"
        " coalesce(sum(amount_minor) FILTER (WHERE status = 'pending_capture'), 0)::bigint AS pending_capture_minor,"
        " count(*) AS charges"
        " FROM charges WHERE practice_id = $1 AND status <> 'paid' GROUP BY currency ORDER BY currency",
        practice_id,
    )

"""Every SQL statement of the billing service, nothing else."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from shared.db import columns

CHARGE_COLUMNS = (
    "charge_id::text AS charge_id, booking_id, request_id, practice_id, patient_id, kind, amount_minor,"
    " currency, code, code_system, charge_card, status, failure_reason, policy_version, occurred_at,"
    " correlation_id, capture_attempts, first_capture_at, created_at, updated_at, review_until, paid_minor"
)

MOVEMENT_COLUMNS = (
    "movement_id::text AS movement_id, charge_id::text AS charge_id, booking_id, practice_id, patient_id,"
    " request_id, kind, reason, amount_minor, currency, gateway, payment_ref, status, gateway_ref, failure_reason,"
    " attempts, first_attempt_at, actor, correlation_id, created_at, settled_at"
)

PAYMENT_COLUMNS = (
    "p.payment_id::text AS payment_id, p.charge_id::text AS charge_id, p.status, p.amount_minor, p.currency,"
    " p.gateway, p.gateway_ref, p.failure_reason, p.recorded_at"
)


async def lock_bookings_billing(conn: asyncpg.Connection, booking_ids: list[str]) -> None:
    """Serialise billing writes of these bookings for this transaction (a booking's charges,
    deposit and turn-away pay have no row of their own to lock before the first one exists), so
    a booking's rows and audit entries are written by one transaction after the other. One
    statement for a whole set, each lock taken in the order of its key: two replicas locking
    overlapping sets wait for each other instead of deadlocking."""
    keys = sorted({f"billing:booking:{booking_id}" for booking_id in booking_ids})
    if not keys:
        return
    # A volatile function of the select list runs in the ORDER BY's order (Postgres 9.6 and later).
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(k)) FROM unnest($1::text[]) AS k ORDER BY k", keys)


async def insert_charges(conn: asyncpg.Connection, charges: list[dict[str, Any]]) -> set[str]:
    """Store new charges, in one statement; returns the ids of those stored (one that exists
    already, the same request delivered again, is not; a charge given twice is stored from its
    first row)."""
    if not charges:
        return set()
    rows = await conn.fetch(
        "INSERT INTO charges (charge_id, booking_id, request_id, practice_id, patient_id, kind, amount_minor,"
        " currency, code, code_system, charge_card, status, policy_version, occurred_at, correlation_id,"
        " next_capture_at, review_until)"
        " SELECT id, b, r, p, pt, k, a, cur, code, cs, card, s, v, o, corr,"
        " CASE WHEN s = 'pending_capture' THEN now() END, ru"
        " FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[],"
        " $8::text[], $9::text[], $10::text[], $11::boolean[], $12::text[], $13::text[], $14::timestamptz[],"
        " $15::text[], $16::timestamptz[]) WITH ORDINALITY"
        " AS c(id, b, r, p, pt, k, a, cur, code, cs, card, s, v, o, corr, ru, n) ORDER BY n"
        " ON CONFLICT DO NOTHING RETURNING charge_id::text",
        *columns(
            charges,
            "charge_id",
            "booking_id",
            "request_id",
            "practice_id",
            "patient_id",
            "kind",
            "amount_minor",
            "currency",
            "code",
            "code_system",
            "charge_card",
            "status",
            "policy_version",
            "occurred_at",
            "correlation_id",
        ),
        [c.get("review_until") for c in charges],
    )
    return {r["charge_id"] for r in rows}


async def insert_deposit_outcomes(conn: asyncpg.Connection, deposits: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Store what became of deposits, in one statement; returns the (booking_id, request_id) of
    those stored (one recorded already is not; one given twice is stored from its first row)."""
    if not deposits:
        return set()
    rows = await conn.fetch(
        "INSERT INTO deposit_outcomes (booking_id, request_id, practice_id, patient_id, outcome, amount_minor,"
        " currency, credit_note_id, occurred_at)"
        " SELECT b, r, p, pt, o, a, cur, cn, w FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
        " $5::text[], $6::bigint[], $7::text[], $8::uuid[], $9::timestamptz[]) WITH ORDINALITY"
        " AS d(b, r, p, pt, o, a, cur, cn, w, n) ORDER BY n"
        " ON CONFLICT DO NOTHING RETURNING booking_id, request_id",
        *columns(
            deposits,
            "booking_id",
            "request_id",
            "practice_id",
            "patient_id",
            "outcome",
            "amount_minor",
            "currency",
            "credit_note_id",
            "occurred_at",
        ),
    )
    return {(r["booking_id"], r["request_id"]) for r in rows}


async def claim_captures(
    conn: asyncpg.Connection, *, limit: int, lease_seconds: float, saved_cards: bool = True
) -> list[asyncpg.Record]:
    """Take up to `limit` charges due for capture and lease them: until the lease ends no other
    replica takes them; when this one dies mid-call, another takes them after it (and asks the
    gateway again with the same idempotency key). Each retry leases longer (backoff, 1 h cap).
    `saved_cards=True` (Stripe) leaves a charge whose card on file at its practice was registered
    with the sandbox; `saved_cards=False` (the sandbox) leaves the charges of patients whose card
    is a real one (registered with Stripe, or saved in `patient_cards`)."""
    gateway = "stripe" if saved_cards else "sandbox"
    return await conn.fetch(
        f"UPDATE charges SET capture_attempts = capture_attempts + 1,"
        " first_capture_at = coalesce(first_capture_at, now()),"
        " next_capture_at = now() + make_interval(secs => least(3600, $2 * power(2, least(capture_attempts, 12))))"
        " WHERE charge_id IN ("
        "   SELECT charge_id FROM charges c WHERE status = 'pending_capture' AND next_capture_at <= now()"
        f"  AND {_CARD_GATEWAY_SQL.format(charge='c')} IN ($3, 'none')"
        "   ORDER BY next_capture_at, charge_id LIMIT $1 FOR UPDATE SKIP LOCKED)"
        f" RETURNING {CHARGE_COLUMNS}",
        limit,
        lease_seconds,
        gateway,
    )


# The gateway of a charge's card on file: the card registered at its practice (a removed one
# counts as none: `none`), else a card saved in `patient_cards` (Stripe's), else `none`.
_CARD_GATEWAY_SQL = (
    "coalesce((SELECT CASE WHEN pc.removed_at IS NULL THEN pc.gateway ELSE 'none' END FROM practice_cards pc"
    " WHERE pc.practice_id = {charge}.practice_id AND pc.patient_id = {charge}.patient_id),"
    " (SELECT 'stripe' FROM patient_cards lc WHERE lc.patient_id = {charge}.patient_id), 'none')"
)


async def cards_of_charges(conn: asyncpg.Connection, charge_ids: list[str]) -> dict[str, asyncpg.Record]:
    """The card on file each charge is taken from (charge id -> gateway, customer_ref,
    payment_method_ref): its practice's registered card, else the patient's saved Stripe card.
    A charge without one is left out."""
    rows = await conn.fetch(
        "SELECT c.charge_id::text AS charge_id,"
        " CASE WHEN pc.patient_id IS NOT NULL THEN pc.gateway ELSE 'stripe' END AS gateway,"
        " CASE WHEN pc.patient_id IS NOT NULL THEN pc.customer_ref ELSE lc.stripe_customer_id END AS customer_ref,"
        " CASE WHEN pc.patient_id IS NOT NULL THEN pc.payment_method_ref ELSE lc.stripe_payment_method_id END"
        " AS payment_method_ref"
        " FROM charges c"
        " LEFT JOIN practice_cards pc ON pc.practice_id = c.practice_id AND pc.patient_id = c.patient_id"
        " LEFT JOIN patient_cards lc ON lc.patient_id = c.patient_id"
        " WHERE c.charge_id = ANY($1::uuid[])"
        " AND ((pc.patient_id IS NOT NULL AND pc.removed_at IS NULL) OR (pc.patient_id IS NULL AND lc.patient_id IS NOT NULL))",
        charge_ids,
    )
    return {r["charge_id"]: r for r in rows}


async def register_card(conn: asyncpg.Connection, c: dict[str, Any]) -> bool:
    """The patient's card on file at the practice; False when what is held is as new or newer."""
    changed = await conn.fetchval(
        "INSERT INTO practice_cards (practice_id, patient_id, gateway, customer_ref, payment_method_ref, brand,"
        " last4, registered_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (practice_id, patient_id) DO UPDATE SET gateway = EXCLUDED.gateway,"
        " customer_ref = EXCLUDED.customer_ref, payment_method_ref = EXCLUDED.payment_method_ref,"
        " brand = EXCLUDED.brand, last4 = EXCLUDED.last4, registered_at = EXCLUDED.registered_at,"
        " removed_at = NULL, updated_at = now()"
        " WHERE EXCLUDED.registered_at > greatest(practice_cards.registered_at,"
        "   coalesce(practice_cards.removed_at, '-infinity'::timestamptz))"
        " RETURNING true",
        c["practice_id"],
        c["patient_id"],
        c["gateway"],
        c["customer_ref"],
        c["payment_method_ref"],
        c.get("brand"),
        c.get("last4"),
        c["registered_at"],
    )
    return bool(changed)


async def remove_card(
    conn: asyncpg.Connection, practice_id: str, patient_id: str, payment_method_ref: str, removed_at: datetime
) -> bool:
    """Remove the card when it is the one on file and was registered before the removal."""
    changed = await conn.fetchval(
        "UPDATE practice_cards SET removed_at = $4, updated_at = now()"
        " WHERE practice_id = $1 AND patient_id = $2 AND payment_method_ref = $3 AND registered_at <= $4"
        " AND removed_at IS NULL RETURNING true",
        practice_id,
        patient_id,
        payment_method_ref,
        removed_at,
    )
    return bool(changed)


async def card_on_file(conn: asyncpg.Connection, practice_id: str, patient_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT gateway, customer_ref, payment_method_ref, brand, last4, registered_at, removed_at FROM practice_cards"
        " WHERE practice_id = $1 AND patient_id = $2",
        practice_id,
        patient_id,
    )


async def lock_charge(conn: asyncpg.Connection, charge_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {CHARGE_COLUMNS} FROM charges WHERE charge_id = $1 FOR UPDATE", charge_id)


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
    gateway_ref: str | None,
    idempotency_key: str,
    failure_reason: str | None,
    charge_status: str,
    audit: dict[str, Any],
) -> bool:
    """The gateway's answer for a charge still waiting for it (`pending_capture`, nothing paid
    of it: no top-up in flight), in one statement: the charge's new status, the payment row and
    the audit entry (`audit`'s arguments but the charge, amount and currency). False, and nothing
    written, when the charge is not waiting any more (another attempt, or a webhook, recorded it
    first). The UPDATE's own condition decides under the charge's row lock: a recorder that had
    to wait for another reads the row as the other left it (READ COMMITTED re-checks it), as a
    SELECT ... FOR UPDATE before the writes would."""
    recorded = await conn.fetchval(
        "WITH charge AS ("
        " UPDATE charges SET status = $3::text, failure_reason = $4::text, next_capture_at = NULL,"
        " updated_at = now(), paid_minor = CASE WHEN $3::text = 'paid' THEN amount_minor ELSE paid_minor END"
        " WHERE charge_id = $1 AND status = 'pending_capture' AND paid_minor = 0 RETURNING charge_id),"
        " payment AS (INSERT INTO payments (payment_id, charge_id, status, amount_minor, currency, gateway,"
        " gateway_ref, idempotency_key, failure_reason)"
        " SELECT $2, charge_id, $5, $6::bigint, $7::text, $8, $9, $10, $4::text FROM charge)"
        " INSERT INTO billing_audit (at, actor, action, practice_id, booking_id, charge_id, amount_minor, currency,"
        " reason, detail) SELECT $11, $12, $13, $14, $15, charge_id, $6::bigint, $7::text, $16, $17::jsonb FROM charge"
        " RETURNING true",
        charge_id,
        payment_id,
        charge_status,
        failure_reason,
        status,
        amount_minor,
        currency,
        gateway,
        gateway_ref,
        idempotency_key,
        audit["at"],
        audit["actor"],
        audit["action"],
        audit["practice_id"],
        audit["booking_id"],
        audit["reason"],
        json.dumps(audit.get("detail") or {}),
    )
    return bool(recorded)


async def set_charge_state(
    conn: asyncpg.Connection, charge_id: str, *, status: str, paid_minor: int, failure_reason: str | None = None
) -> None:
    """A charge's status and what was paid of it (a review ended, a fee changed, a refund or
    top-up settled). Final and due for the card: the capture task takes it at once."""
    await conn.execute(
        "UPDATE charges SET status = $2::text, paid_minor = $3::bigint, failure_reason = $4::text,"
        " updated_at = now(), review_until = CASE WHEN $2::text = 'pending_review' THEN review_until END,"
        " next_capture_at = CASE WHEN $2::text = 'pending_capture' AND paid_minor = 0 AND $3::bigint = 0"
        " THEN now() END"
        " WHERE charge_id = $1",
        charge_id,
        status,
        paid_minor,
        failure_reason,
    )


async def claim_due_reviews(conn: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    """Fees whose review window ended undecided, locked for this transaction (replicas skip them)."""
    return await conn.fetch(
        f"SELECT {CHARGE_COLUMNS} FROM charges WHERE status = 'pending_review' AND review_until <= $1"
        " ORDER BY review_until, charge_id LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        limit,
    )


async def captured_payment(conn: asyncpg.Connection, charge_id: str) -> asyncpg.Record | None:
    """The card payment that took the charge (what a refund gives back from)."""
    return await conn.fetchrow(
        "SELECT gateway, gateway_ref, amount_minor FROM payments WHERE charge_id = $1 AND status = 'captured'",
        charge_id,
    )


async def insert_movement(conn: asyncpg.Connection, m: dict[str, Any]) -> bool:
    """A refund or top-up to make through the gateway; False when the request made it already."""
    inserted = await conn.fetchval(
        "INSERT INTO charge_movements (movement_id, charge_id, booking_id, practice_id, patient_id, request_id, kind,"
        " reason, amount_minor, currency, gateway, payment_ref, status, actor, correlation_id, next_attempt_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending', $13, $14, now())"
        " ON CONFLICT DO NOTHING RETURNING true",
        m["movement_id"],
        m["charge_id"],
        m["booking_id"],
        m["practice_id"],
        m["patient_id"],
        m["request_id"],
        m["kind"],
        m["reason"],
        m["amount_minor"],
        m["currency"],
        m["gateway"],
        m.get("payment_ref"),
        m["actor"],
        m.get("correlation_id"),
    )
    return bool(inserted)


async def claim_movements(
    conn: asyncpg.Connection, *, limit: int, lease_seconds: float, gateway: str
) -> list[asyncpg.Record]:
    """Refunds and top-ups of this gateway due to be sent, leased like captures (backoff, 1 h cap)."""
    return await conn.fetch(
        "UPDATE charge_movements SET attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, now()),"
        " next_attempt_at = now() + make_interval(secs => least(3600, $2 * power(2, least(attempts, 12))))"
        " WHERE movement_id IN ("
        "   SELECT movement_id FROM charge_movements WHERE status = 'pending' AND next_attempt_at <= now()"
        "   AND gateway = $3 ORDER BY next_attempt_at, movement_id LIMIT $1 FOR UPDATE SKIP LOCKED)"
        f" RETURNING {MOVEMENT_COLUMNS}",
        limit,
        lease_seconds,
        gateway,
    )


async def charge_of_movement(conn: asyncpg.Connection, movement_id: str) -> str | None:
    value = await conn.fetchval("SELECT charge_id::text FROM charge_movements WHERE movement_id = $1", movement_id)
    return str(value) if value is not None else None


async def lock_movement(conn: asyncpg.Connection, movement_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {MOVEMENT_COLUMNS} FROM charge_movements WHERE movement_id = $1 FOR UPDATE", movement_id
    )


async def settle_movement(
    conn: asyncpg.Connection, movement_id: str, *, status: str, gateway_ref: str | None, failure_reason: str | None
) -> None:
    await conn.execute(
        "UPDATE charge_movements SET status = $2::text, gateway_ref = coalesce($3, gateway_ref), failure_reason = $4,"
        " next_attempt_at = NULL, settled_at = CASE WHEN $2::text IN ('succeeded', 'failed') THEN now() END"
        " WHERE movement_id = $1",
        movement_id,
        status,
        gateway_ref,
        failure_reason,
    )


async def record_review(conn: asyncpg.Connection, r: dict[str, Any]) -> bool:
    """Record the one answer to a review decision; False when it was answered already."""
    inserted = await conn.fetchval(
        "INSERT INTO charge_reviews (request_id, charge_id, practice_id, booking_id, actor, actor_roles, decision,"
        " outcome, reason, before, after, note, requested_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11::jsonb, $12, $13)"
        " ON CONFLICT (request_id) DO NOTHING RETURNING true",
        r["request_id"],
        r["charge_id"],
        r["practice_id"],
        r["booking_id"],
        r["actor"],
        r["actor_roles"],
        r["decision"],
        r["outcome"],
        r["reason"],
        json.dumps(r["before"]) if r.get("before") is not None else None,
        json.dumps(r["after"]) if r.get("after") is not None else None,
        r.get("note"),
        r["requested_at"],
    )
    return bool(inserted)


async def set_stripe_event_outcome(conn: asyncpg.Connection, event_id: str, outcome: str) -> None:
    await conn.execute("UPDATE stripe_events SET outcome = $2 WHERE event_id = $1", event_id, outcome)


async def record_stripe_event(
    conn: asyncpg.Connection, event_id: str, type_: str, object_id: str | None, outcome: str
) -> bool:
    """Stripe's event, once by its id; False when it was received before."""
    inserted = await conn.fetchval(
        "INSERT INTO stripe_events (event_id, type, object_id, outcome) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT DO NOTHING RETURNING true",
        event_id,
        type_,
        object_id,
        outcome,
    )
    return bool(inserted)


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
    await audit_many(
        conn,
        [
            {
                "at": at,
                "actor": actor,
                "action": action,
                "practice_id": practice_id,
                "booking_id": booking_id,
                "reason": reason,
                "charge_id": charge_id,
                "amount_minor": amount_minor,
                "currency": currency,
                "detail": detail,
            }
        ],
    )


async def audit_many(conn: asyncpg.Connection, entries: list[dict[str, Any]]) -> None:
    """Append to the audit in the entries' order, in one statement; each entry as `audit`'s
    arguments (a dict)."""
    if not entries:
        return
    await conn.execute(
        "INSERT INTO billing_audit (at, actor, action, practice_id, booking_id, charge_id, amount_minor, currency,"
        " reason, detail)"
        " SELECT w, who, act, p, b, c, a, cur, why, d FROM unnest($1::timestamptz[], $2::text[], $3::text[],"
        " $4::text[], $5::text[], $6::uuid[], $7::bigint[], $8::text[], $9::text[], $10::jsonb[]) WITH ORDINALITY"
        " AS e(w, who, act, p, b, c, a, cur, why, d, n) ORDER BY n",
        *columns(entries, "at", "actor", "action", "practice_id", "booking_id"),
        [e.get("charge_id") for e in entries],
        [e.get("amount_minor") for e in entries],
        [e.get("currency") for e in entries],
        [e["reason"] for e in entries],
        [json.dumps(e.get("detail") or {}) for e in entries],
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
        " coalesce(sum(amount_minor - paid_minor) FILTER (WHERE status = 'outstanding'), 0)::bigint"
        " AS outstanding_minor,"
        " coalesce(sum(amount_minor - paid_minor) FILTER (WHERE status = 'pending_capture'), 0)::bigint"
        " AS pending_capture_minor,"
        " coalesce(sum(amount_minor) FILTER (WHERE status = 'pending_review'), 0)::bigint AS pending_review_minor,"
        " count(*) AS charges"
        " FROM charges WHERE practice_id = $1 AND status NOT IN ('paid', 'waived') GROUP BY currency ORDER BY currency",
        practice_id,
    )


async def movements_of_booking(
    pool: asyncpg.Pool, booking_id: str, *, practice_ids: list[str] | None
) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"SELECT {MOVEMENT_COLUMNS} FROM charge_movements"
        " WHERE booking_id = $1 AND ($2::text[] IS NULL OR practice_id = ANY($2)) ORDER BY created_at, movement_id",
        booking_id,
        practice_ids,
    )


async def reviews_of_booking(
    pool: asyncpg.Pool, booking_id: str, *, practice_ids: list[str] | None
) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT request_id, charge_id, actor, actor_roles, decision, outcome, reason, before::text AS before,"
        " after::text AS after, note, requested_at, recorded_at FROM charge_reviews"
        " WHERE booking_id = $1 AND ($2::text[] IS NULL OR practice_id = ANY($2)) ORDER BY requested_at, request_id",
        booking_id,
        practice_ids,
    )


async def charges_in_review(
    pool: asyncpg.Pool, *, practice_ids: list[str] | None, limit: int, offset: int
) -> list[asyncpg.Record]:
    """The review queue: fees waiting for staff, the soonest window end first."""
    return await pool.fetch(
        f"SELECT {CHARGE_COLUMNS} FROM charges WHERE status = 'pending_review'"
        " AND ($1::text[] IS NULL OR practice_id = ANY($1)) ORDER BY review_until, charge_id LIMIT $2 OFFSET $3",
        practice_ids,
        limit,
        offset,
    )


# --- turn-away pay (second release, issue 17; turnaway.py) ---------------------------------------


async def record_turnaway_pays(conn: asyncpg.Connection, owed: list[dict[str, Any]]) -> set[str]:
    """Record what offices owe professionals, one row per booking, in one statement; returns the
    booking ids recorded (one known already is not; one given twice is stored from its first row)."""
    if not owed:
        return set()
    rows = await conn.fetch(
        "INSERT INTO turnaway_pay (booking_id, practice_id, professional_id, amount_minor, currency, owed_at,"
        " request_id, event_id)"
        " SELECT b, p, pro, a, cur, w, r, e FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[],"
        " $5::text[], $6::timestamptz[], $7::text[], $8::text[]) WITH ORDINALITY"
        " AS t(b, p, pro, a, cur, w, r, e, n) ORDER BY n"
        " ON CONFLICT (booking_id) DO NOTHING RETURNING booking_id",
        *columns(
            owed,
            "booking_id",
            "practice_id",
            "professional_id",
            "amount_minor",
            "currency",
            "owed_at",
            "request_id",
            "event_id",
        ),
    )
    return {r["booking_id"] for r in rows}


async def turnaway_pay_of_practice(
    pool: asyncpg.Pool, practice_id: str, *, owed_from: datetime, owed_before: datetime
) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT booking_id, professional_id, amount_minor, currency, owed_at FROM turnaway_pay"
        " WHERE practice_id = $1 AND owed_at >= $2 AND owed_at < $3 ORDER BY owed_at, booking_id LIMIT 1000",
        practice_id,
        owed_from,
        owed_before,
    )


async def turnaway_pay_totals(
    pool: asyncpg.Pool, practice_ids: list[str] | None, *, owed_from: datetime, owed_before: datetime
) -> list[asyncpg.Record]:
    """Per practice and currency (amounts in different currencies never add up)."""
    return await pool.fetch(
        "SELECT practice_id, currency, count(*)::int AS bookings, sum(amount_minor)::bigint AS amount_minor"
        " FROM turnaway_pay WHERE owed_at >= $2 AND owed_at < $3 AND ($1::text[] IS NULL OR practice_id = ANY($1))"
        " GROUP BY practice_id, currency ORDER BY practice_id, currency",
        practice_ids,
        owed_from,
        owed_before,
    )

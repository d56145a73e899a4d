"""Every SQL statement of the notification service, nothing else."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from shared.db import columns

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
        p["practice_id"],
        p["name"],
        p["timezone"],
        p["locale"],
        p["email"],
        p["phone"],
        p["preferred_channel"],
        p["notify_practice_on_online_cancel"],
        configured_at,
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
        p["booking_id"],
        p["practice_id"],
        p["patient_id"],
        p["first_name"],
        p["email"],
        p["phone"],
        p["locale"],
        p["starts_at"],
        scheduled_at,
    )


async def reschedule_many(conn: asyncpg.Connection, moves: list[tuple[str, datetime]]) -> None:
    """Each booking's new start, (booking_id, starts_at); a booking never seen is left unknown."""
    if not moves:
        return
    await conn.execute(
        "UPDATE patients p SET starts_at = m.starts_at, updated_at = now()"
        " FROM unnest($1::text[], $2::timestamptz[]) AS m(booking_id, starts_at) WHERE p.booking_id = m.booking_id",
        [m[0] for m in moves],
        [m[1] for m in moves],
    )


async def remember_requests(conn: asyncpg.Connection, requests: list[dict[str, Any]]) -> None:
    """Who asked for each cancellation and how; the first record of a request id stands."""
    if not requests:
        return
    await conn.execute(
        "INSERT INTO cancellation_requests (request_id, booking_id, actor_kind, channel, requested_at)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])"
        " ON CONFLICT (request_id) DO NOTHING",
        *columns(requests, "request_id", "booking_id", "actor_kind", "channel", "requested_at"),
    )


async def get_practices(conn: Conn, practice_ids: list[str]) -> dict[str, asyncpg.Record]:
    """The practices by id; one never configured is absent."""
    rows = await conn.fetch(
        "SELECT practice_id, name, timezone, locale, email, phone, preferred_channel,"
        " notify_practice_on_online_cancel FROM practices WHERE practice_id = ANY($1::text[])",
        practice_ids,
    )
    return {r["practice_id"]: r for r in rows}


async def get_patients(conn: Conn, booking_ids: list[str]) -> dict[str, asyncpg.Record]:
    """The patient of each booking by booking id; a booking never scheduled is absent."""
    rows = await conn.fetch(
        "SELECT booking_id, practice_id, first_name, email, phone, locale, starts_at FROM patients"
        " WHERE booking_id = ANY($1::text[])",
        booking_ids,
    )
    return {r["booking_id"]: r for r in rows}


async def requester_kind(conn: Conn, request_id: str) -> str | None:
    return await conn.fetchval("SELECT actor_kind FROM cancellation_requests WHERE request_id = $1", request_id)


async def upsert_professional(conn: asyncpg.Connection, p: dict[str, Any], scheduled_at: datetime) -> None:
    """Store how to reach a professional; a replayed older booking.scheduled never overwrites a newer one."""
    await conn.execute(
        "INSERT INTO professionals (professional_id, practice_id, first_name, email, phone, locale, scheduled_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (professional_id) DO UPDATE SET practice_id = EXCLUDED.practice_id,"
        " first_name = EXCLUDED.first_name, email = EXCLUDED.email, phone = EXCLUDED.phone,"
        " locale = EXCLUDED.locale, scheduled_at = EXCLUDED.scheduled_at, updated_at = now()"
        " WHERE professionals.scheduled_at <= EXCLUDED.scheduled_at",
        p["professional_id"],
        p["practice_id"],
        p["first_name"],
        p["email"],
        p["phone"],
        p["locale"],
        scheduled_at,
    )


async def get_professionals(conn: Conn, professional_ids: list[str]) -> dict[str, asyncpg.Record]:
    """The professionals by id; one no booking.scheduled named with a contact is absent."""
    rows = await conn.fetch(
        "SELECT professional_id, practice_id, first_name, email, phone, locale FROM professionals"
        " WHERE professional_id = ANY($1::text[])",
        professional_ids,
    )
    return {r["professional_id"]: r for r in rows}


# --- the waitlist and its offers ---------------------------------------------------------------


async def lock_waitlist_entry(conn: asyncpg.Connection, waitlist_id: str) -> None:
    """Serialise, until the transaction ends, everything about one waitlist entry: its contacts
    and its offers arrive on different topics, and whichever is second must see the first."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"notification.waitlist:{waitlist_id}")


async def upsert_waitlist_entry(conn: asyncpg.Connection, w: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO waitlist_entries (waitlist_id, practice_id, patient_id, first_name, email, phone, locale,"
        " joined_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (waitlist_id) DO UPDATE SET practice_id = EXCLUDED.practice_id,"
        " patient_id = EXCLUDED.patient_id, first_name = EXCLUDED.first_name, email = EXCLUDED.email,"
        " phone = EXCLUDED.phone, locale = EXCLUDED.locale, joined_at = EXCLUDED.joined_at, updated_at = now()"
        " WHERE waitlist_entries.joined_at <= EXCLUDED.joined_at",
        w["waitlist_id"],
        w["practice_id"],
        w["patient_id"],
        w["first_name"],
        w["email"],
        w["phone"],
        w["locale"],
        w["joined_at"],
    )


async def get_waitlist_entry(conn: Conn, waitlist_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT waitlist_id, practice_id, first_name, email, phone, locale FROM waitlist_entries"
        " WHERE waitlist_id = $1",
        waitlist_id,
    )


async def remember_offer(conn: asyncpg.Connection, o: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO slot_offers (offer_id, booking_id, waitlist_id, expires_at, event_id, correlation_id)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (offer_id) DO NOTHING",
        o["offer_id"],
        o["booking_id"],
        o["waitlist_id"],
        o["expires_at"],
        o["event_id"],
        o["correlation_id"],
    )


async def untold_offers(conn: asyncpg.Connection, waitlist_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT offer_id, booking_id, waitlist_id, expires_at, event_id, correlation_id FROM slot_offers"
        " WHERE waitlist_id = $1 AND NOT told ORDER BY received_at",
        waitlist_id,
    )


async def mark_offer_told(conn: asyncpg.Connection, offer_id: str) -> None:
    await conn.execute("UPDATE slot_offers SET told = true WHERE offer_id = $1", offer_id)


# --- no-show fees ------------------------------------------------------------------------------

_NO_SHOW_FEE = (
    "booking_id, practice_id, starts_at, charge_card, charge_id, amount, currency, code, code_system, payment"
)


async def merge_no_shows(conn: asyncpg.Connection, no_shows: list[dict[str, Any]]) -> dict[str, asyncpg.Record]:
    """What each booking.no_show_recorded tells of its fee (booking_id, practice_id, starts_at,
    charge_card); returns, by booking, all that is known now. The rows are locked in booking
    order (the order of every writer of this table), so two sets never wait on each other."""
    if not no_shows:
        return {}
    rows = await conn.fetch(
        "INSERT INTO no_show_fees (booking_id, practice_id, starts_at, charge_card)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::boolean[])"
        " AS n(booking_id, practice_id, starts_at, charge_card) ORDER BY booking_id"
        " ON CONFLICT (booking_id) DO UPDATE SET practice_id = EXCLUDED.practice_id,"
        " starts_at = EXCLUDED.starts_at, charge_card = EXCLUDED.charge_card, updated_at = now()"
        f" RETURNING {_NO_SHOW_FEE}",
        *columns(no_shows, "booking_id", "practice_id", "starts_at", "charge_card"),
    )
    return {r["booking_id"]: r for r in rows}


async def merge_no_show_charges(conn: asyncpg.Connection, charges: list[dict[str, Any]]) -> dict[str, asyncpg.Record]:
    """What each charge.created (kind no_show) tells; returns, by booking, all that is known now
    (rows locked in booking order).

    A booking has one no-show, so one no-show charge: the first one seen stands, and a second
    (which billing's deterministic charge ids should make impossible) is ignored, never told
    twice: its booking is absent from the result.
    """
    if not charges:
        return {}
    rows = await conn.fetch(
        "INSERT INTO no_show_fees (booking_id, charge_id, amount, currency, code, code_system)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::numeric[], $4::text[], $5::text[], $6::text[])"
        " AS c(booking_id, charge_id, amount, currency, code, code_system) ORDER BY booking_id"
        " ON CONFLICT (booking_id) DO UPDATE SET charge_id = EXCLUDED.charge_id, amount = EXCLUDED.amount,"
        " currency = EXCLUDED.currency, code = EXCLUDED.code, code_system = EXCLUDED.code_system,"
        " updated_at = now()"
        " WHERE no_show_fees.charge_id IS NULL OR no_show_fees.charge_id = EXCLUDED.charge_id"
        f" RETURNING {_NO_SHOW_FEE}",
        *columns(charges, "booking_id", "charge_id", "amount", "currency", "code", "code_system"),
    )
    return {r["booking_id"]: r for r in rows}


async def merge_no_show_payments(
    conn: asyncpg.Connection, payments: list[tuple[str, str, str]]
) -> dict[str, asyncpg.Record]:
    """The card's answer for each no-show charge we know, (booking_id, charge_id, payment);
    returns, by booking, all that is known now. A payment for any other charge changes nothing
    and its booking is absent. The first answer stands. The rows are locked in booking order
    first (`locked`), as every writer of this table locks them."""
    if not payments:
        return {}
    rows = await conn.fetch(
        "WITH locked AS MATERIALIZED (SELECT booking_id FROM no_show_fees WHERE booking_id = ANY($1::text[])"
        " ORDER BY booking_id FOR UPDATE)"
        " UPDATE no_show_fees f SET payment = COALESCE(f.payment, p.payment), updated_at = now()"
        " FROM locked JOIN unnest($1::text[], $2::text[], $3::text[]) AS p(booking_id, charge_id, payment)"
        " USING (booking_id)"
        f" WHERE f.booking_id = p.booking_id AND f.charge_id = p.charge_id RETURNING {_prefixed(_NO_SHOW_FEE, 'f')}",
        [p[0] for p in payments],
        [p[1] for p in payments],
        [p[2] for p in payments],
    )
    return {r["booking_id"]: r for r in rows}


def _prefixed(columns: str, alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


# --- late-cancellation fees in review ------------------------------------------------------------


async def remember_fees_in_review(conn: asyncpg.Connection, fees: list[dict[str, Any]]) -> None:
    """Late-cancellation fees announced in review (charge_id, booking_id, review_until,
    announced_at): each one's patient is told when it is final. The first announcement stands
    (a replay under a new envelope id changes nothing)."""
    if not fees:
        return
    await conn.execute(
        "INSERT INTO late_fees_in_review (charge_id, booking_id, review_until, announced_at)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])"
        " ON CONFLICT (charge_id) DO NOTHING",
        *columns(fees, "charge_id", "booking_id", "review_until", "announced_at"),
    )


async def mark_fees_final(conn: asyncpg.Connection, finals: list[tuple[str, datetime]]) -> set[str]:
    """Late-cancellation fees announced final, (charge_id, final_at): the ids of those announced
    in review before (their patients are to be told now); a fee never in review was told with
    the cancellation and is absent. The first final announcement's time stands."""
    if not finals:
        return set()
    rows = await conn.fetch(
        "UPDATE late_fees_in_review l SET final_at = COALESCE(l.final_at, f.final_at)"
        " FROM unnest($1::text[], $2::timestamptz[]) AS f(charge_id, final_at)"
        " WHERE l.charge_id = f.charge_id RETURNING l.charge_id",
        [f[0] for f in finals],
        [f[1] for f in finals],
    )
    return {r["charge_id"] for r in rows}


# --- the delivery log --------------------------------------------------------------------------

# What the sender needs of a claimed delivery.
_CLAIMED = ", ".join(
    f"d.{column}"
    for column in (
        "notification_id",
        "event_type",
        "correlation_id",
        "booking_id",
        "practice_id",
        "professional_id",
        "recipient",
        "channel",
        "template",
        "address",
        "subject",
        "body",
        "attempts",
    )
)


async def record_deliveries(conn: asyncpg.Connection, deliveries: list[dict[str, Any]]) -> None:
    """Record the messages to send (and those skipped) in one statement; a notification id
    recorded already (a redelivery, the same fact again) is left as it is."""
    if not deliveries:
        return
    await conn.execute(
        "INSERT INTO deliveries (notification_id, event_id, event_type, correlation_id, booking_id,"
        " practice_id, recipient, channel, template, locale, address, subject, body, status, reason,"
        " finished_at, professional_id)"
        " SELECT n, e, t, c, b, p, r, ch, tpl, l, a, s, body, st, why, CASE WHEN st = 'skipped' THEN now() END, pro"
        " FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
        " $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],"
        " $16::text[]) AS d(n, e, t, c, b, p, r, ch, tpl, l, a, s, body, st, why, pro)"
        " ON CONFLICT (notification_id) DO NOTHING",
        *(
            [d.get(column) for d in deliveries]
            for column in (
                "notification_id",
                "event_id",
                "event_type",
                "correlation_id",
                "booking_id",
                "practice_id",
                "recipient",
                "channel",
                "template",
                "locale",
                "address",
                "subject",
                "body",
                "status",
                "reason",
                "professional_id",
            )
        ),
    )


async def claim_due(conn: asyncpg.Connection, limit: int, lease_seconds: float) -> list[asyncpg.Record]:
    """Claim up to `limit` pending deliveries that are due, counting the attempt.

    SKIP LOCKED: replicas claiming at the same moment take disjoint rows, never the same one.
    The lease (`next_attempt_at` pushed forward) keeps the row from being claimed again while
    it is being sent; if this process dies mid-send, the row is due again when the lease ends.
    `finished_at IS NULL` is what lets the planner use `deliveries_unfinished` (migration 0005;
    a pending row is exactly an unfinished one).
    """
    return await conn.fetch(
        "UPDATE deliveries d SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)"
        " FROM (SELECT notification_id FROM deliveries"
        " WHERE finished_at IS NULL AND status = 'pending' AND next_attempt_at <= now()"
        " ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due"
        f" WHERE d.notification_id = due.notification_id RETURNING {_CLAIMED}",
        limit,
        lease_seconds,
    )


async def mark_sent(
    conn: asyncpg.Connection, notification_id: uuid.UUID, provider_message_id: str | None = None
) -> bool:
    """The provider accepted it (under its own id, if it gave one). A success is a fact:
    recorded whoever holds the claim now."""
    updated = await conn.fetchval(
        "UPDATE deliveries SET status = 'sent', reason = NULL, finished_at = now(), provider_message_id = $2"
        " WHERE notification_id = $1 AND status = 'pending' RETURNING true",
        notification_id,
        provider_message_id,
    )
    return bool(updated)


async def record_provider_status(
    conn: Conn, provider_message_id: str, status: str, error_code: str | None, earlier: list[str]
) -> bool | None:
    """The provider's status of a message it accepted, unless the row already has this status or
    a later one (`earlier`: the statuses it may replace), so a callback repeated or out of order
    changes nothing. None when no delivery has this provider id."""
    return await conn.fetchval(
        "WITH target AS (SELECT notification_id FROM deliveries WHERE provider_message_id = $1),"
        " changed AS (UPDATE deliveries d SET provider_status = $2, provider_error_code = $3,"
        " provider_status_at = now() FROM target WHERE d.notification_id = target.notification_id"
        " AND (d.provider_status IS NULL OR d.provider_status = ANY($4::text[])) RETURNING true)"
        " SELECT CASE WHEN EXISTS (SELECT 1 FROM changed) THEN true"
        " WHEN EXISTS (SELECT 1 FROM target) THEN false END",
        provider_message_id,
        status,
        error_code,
        earlier,
    )


async def mark_failed(conn: asyncpg.Connection, notification_id: uuid.UUID, attempts: int, reason: str) -> bool:
    """Out of tries, or a failure no retry can fix; only by the holder of the latest claim."""
    updated = await conn.fetchval(
        "UPDATE deliveries SET status = 'failed', reason = $3, finished_at = now()"
        " WHERE notification_id = $1 AND status = 'pending' AND attempts = $2 RETURNING true",
        notification_id,
        attempts,
        reason,
    )
    return bool(updated)


async def schedule_retry(
    conn: asyncpg.Connection, notification_id: uuid.UUID, attempts: int, delay_seconds: float, reason: str
) -> bool:
    updated = await conn.fetchval(
        "UPDATE deliveries SET reason = $3, next_attempt_at = now() + make_interval(secs => $4)"
        " WHERE notification_id = $1 AND status = 'pending' AND attempts = $2 RETURNING true",
        notification_id,
        attempts,
        reason,
        delay_seconds,
    )
    return bool(updated)


# What the read API shows of a delivery: ids, roles, template, status and the reason as recorded
# (masked by shared.redaction); no address, no subject, no text.
_LOGGED = (
    "notification_id, event_id, event_type, booking_id, professional_id, practice_id, recipient, channel,"
    " template, locale, status, reason, attempts, next_attempt_at, created_at, finished_at,"
    " provider_status, provider_error_code, provider_status_at"
)


async def booking_practice(conn: Conn, booking_id: str) -> asyncpg.Record:
    """Whether this service knows the booking (its patient, or a delivery about it), and its
    practice: the patient's booking.scheduled, else the practice its deliveries were written for
    (NULL when neither says)."""
    return await conn.fetchrow(
        "SELECT EXISTS (SELECT 1 FROM patients WHERE booking_id = $1)"
        " OR EXISTS (SELECT 1 FROM deliveries WHERE booking_id = $1) AS known,"
        " COALESCE((SELECT practice_id FROM patients WHERE booking_id = $1),"
        " (SELECT practice_id FROM deliveries WHERE booking_id = $1 AND practice_id IS NOT NULL"
        " ORDER BY created_at, notification_id LIMIT 1)) AS practice_id",
        booking_id,
    )


async def professional_known(conn: Conn, professional_id: str) -> bool:
    """Whether this service knows the professional (their contacts, or a notice to them)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM professionals WHERE professional_id = $1)"
            " OR EXISTS (SELECT 1 FROM deliveries WHERE professional_id = $1)",
            professional_id,
        )
    )


async def deliveries_for_booking(
    conn: Conn, booking_id: str, *, with_professional: bool, limit: int, offset: int
) -> list[asyncpg.Record]:
    """The delivery log of one booking, without addresses or message text; notices to the
    booked professional (holds) only `with_professional` (they are the professional's, not the
    practice's)."""
    return await conn.fetch(
        f"SELECT {_LOGGED} FROM deliveries WHERE booking_id = $1 AND ($2 OR recipient <> 'professional')"
        " ORDER BY created_at, event_id, recipient, channel LIMIT $3 OFFSET $4",
        booking_id,
        with_professional,
        limit,
        offset,
    )


async def deliveries_for_professional(
    conn: Conn, professional_id: str, *, limit: int, offset: int
) -> list[asyncpg.Record]:
    """The notices sent to one professional (holds, suspension), oldest first, without addresses or text."""
    return await conn.fetch(
        f"SELECT {_LOGGED} FROM deliveries WHERE professional_id = $1"
        " ORDER BY created_at, event_id, recipient, channel, notification_id LIMIT $2 OFFSET $3",
        professional_id,
        limit,
        offset,
    )

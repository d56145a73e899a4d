"""Every SQL statement of the booking service, nothing else.

The functions ending in a plural (`lock_bookings`, `audit_many`, ...) serve the set-based
handlers: one statement for the whole set, whatever its size (`unnest` of arrays, `= ANY`)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared.db import columns

BOOKING_COLUMNS = (
    "booking_id, practice_id, practitioner_id, service_code, starts_at, ends_at, patient_id,"
    " patient_portal_account, patient_card_on_file, professional_id, series_id,"
    " deposit_amount, deposit_currency, price_amount, price_currency, status, status_label,"
    " classification, closed_at"
)


async def insert_booking(conn: asyncpg.Connection, b: dict[str, Any]) -> bool:
    """Store a newly scheduled booking; False when it is known already (upstream replay)."""
    inserted = await conn.fetchval(
        "INSERT INTO bookings (booking_id, practice_id, practitioner_id, service_code, starts_at,"
        " ends_at, patient_id, patient_portal_account, patient_card_on_file, professional_id,"
        " series_id, deposit_amount, deposit_currency, price_amount, price_currency)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        " ON CONFLICT (booking_id) DO NOTHING RETURNING true",
        b["booking_id"],
        b["practice_id"],
        b["practitioner_id"],
        b["service_code"],
        b["starts_at"],
        b["ends_at"],
        b["patient_id"],
        b["patient_portal_account"],
        b["patient_card_on_file"],
        b["professional_id"],
        b["series_id"],
        b["deposit_amount"],
        b["deposit_currency"],
        b["price_amount"],
        b["price_currency"],
    )
    return bool(inserted)


async def lock_booking(conn: asyncpg.Connection, booking_id: str) -> asyncpg.Record | None:
    """The booking, locked for this transaction so per-booking changes are serialised."""
    return await conn.fetchrow(f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE booking_id = $1 FOR UPDATE", booking_id)


async def lock_later_in_series(conn: asyncpg.Connection, series_id: str, after: datetime) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE series_id = $1 AND starts_at > $2"
        " AND status = 'scheduled' ORDER BY starts_at FOR UPDATE",
        series_id,
        after,
    )


async def reschedule(conn: asyncpg.Connection, booking_id: str, starts_at: datetime, ends_at: datetime) -> None:
    await conn.execute(
        "UPDATE bookings SET starts_at = $2, ends_at = $3, updated_at = now() WHERE booking_id = $1",
        booking_id,
        starts_at,
        ends_at,
    )


async def close_booking(
    conn: asyncpg.Connection,
    booking_ids: list[str],
    *,
    status: str,
    closed_at: datetime,
    status_label: str | None = None,
    classification: str | None = None,
) -> None:
    await conn.execute(
        "UPDATE bookings SET status = $2, status_label = $3, classification = $4, closed_at = $5,"
        " updated_at = now() WHERE booking_id = ANY($1::text[]) AND status = 'scheduled'",
        booking_ids,
        status,
        status_label,
        classification,
        closed_at,
    )


async def lock_bookings(conn: asyncpg.Connection, booking_ids: list[str]) -> dict[str, asyncpg.Record]:
    """The bookings by id, locked for this transaction in id order (one order everywhere, so two
    transactions never wait on each other in a cycle); an unknown id is absent."""
    rows = await conn.fetch(
        f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE booking_id = ANY($1::text[]) ORDER BY booking_id FOR UPDATE",
        booking_ids,
    )
    return {r["booking_id"]: r for r in rows}


async def get_bookings(conn: asyncpg.Connection, booking_ids: list[str]) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE booking_id = ANY($1::text[])", booking_ids)
    return {r["booking_id"]: r for r in rows}


async def close_bookings(conn: asyncpg.Connection, closes: list[dict[str, Any]]) -> None:
    """Close each scheduled booking as its entry says (booking_id, status, closed_at, status_label,
    classification); a booking no longer scheduled is left as it is."""
    if not closes:
        return
    await conn.execute(
        "UPDATE bookings b SET status = c.status, status_label = c.status_label, classification = c.classification,"
        " closed_at = c.closed_at, updated_at = now()"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])"
        " AS c(booking_id, status, status_label, classification, closed_at)"
        " WHERE b.booking_id = c.booking_id AND b.status = 'scheduled'",
        [c["booking_id"] for c in closes],
        [c["status"] for c in closes],
        [c.get("status_label") for c in closes],
        [c.get("classification") for c in closes],
        [c["closed_at"] for c in closes],
    )


async def add_pending_requests(
    conn: asyncpg.Connection, requests: list[tuple[str, str, str, dict[str, Any]]]
) -> dict[str, str | None]:
    """Record requests for the policy, (request_id, booking_id, kind, request) each: per request
    id None when it is new, else the booking it was used for before."""
    if not requests:
        return {}
    inserted = await conn.fetch(
        "INSERT INTO pending_requests (request_id, booking_id, kind, request)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[])"
        " ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
        [r[0] for r in requests],
        [r[1] for r in requests],
        [r[2] for r in requests],
        [json.dumps(r[3]) for r in requests],
    )
    new = {r["request_id"] for r in inserted}
    used = [r[0] for r in requests if r[0] not in new]
    before = (
        {
            r["request_id"]: r["booking_id"]
            for r in await conn.fetch(
                "SELECT request_id, booking_id FROM pending_requests WHERE request_id = ANY($1::text[])", used
            )
        }
        if used
        else {}
    )
    return {r[0]: None if r[0] in new else before.get(r[0]) for r in requests}


async def take_pending_requests(conn: asyncpg.Connection, request_ids: list[str]) -> dict[str, asyncpg.Record]:
    """The undecided requests, marked decided; one unknown or decided already is absent."""
    rows = await conn.fetch(
        "UPDATE pending_requests SET decided_at = now() WHERE request_id = ANY($1::text[]) AND decided_at IS NULL"
        " RETURNING request_id, booking_id, kind, request::text AS request",
        request_ids,
    )
    return {r["request_id"]: r for r in rows}


async def audit_many(conn: asyncpg.Connection, entries: list[dict[str, Any]]) -> None:
    """Append to the audit trail in the entries' order; each entry as `audit`'s arguments."""
    if not entries:
        return
    await conn.execute(
        "INSERT INTO audit_trail (booking_id, at, action, actor, channel, request_id, reason, policy_version, detail)"
        " SELECT b, at, a, actor, ch, r, why, v, d FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::jsonb[],"
        " $5::text[], $6::text[], $7::text[], $8::text[], $9::jsonb[]) WITH ORDINALITY"
        " AS e(b, at, a, actor, ch, r, why, v, d, n) ORDER BY n",
        *columns(entries, "booking_id", "at", "action"),
        [json.dumps(e["actor"]) if e.get("actor") else None for e in entries],
        [e.get("channel") for e in entries],
        [e.get("request_id") for e in entries],
        [e.get("reason") for e in entries],
        [e.get("policy_version") for e in entries],
        [json.dumps(e.get("detail") or {}) for e in entries],
    )


async def audit(
    conn: asyncpg.Connection,
    booking_id: str,
    *,
    at: datetime,
    action: str,
    actor: dict[str, Any] | None = None,
    channel: str | None = None,
    request_id: str | None = None,
    reason: str | None = None,
    policy_version: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO audit_trail (booking_id, at, action, actor, channel, request_id, reason,"
        " policy_version, detail) VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9::jsonb)",
        booking_id,
        at,
        action,
        json.dumps(actor) if actor else None,
        channel,
        request_id,
        reason,
        policy_version,
        json.dumps(detail or {}),
    )


async def get_booking(conn: asyncpg.Connection | asyncpg.Pool, booking_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE booking_id = $1", booking_id)


async def audit_trail(conn: asyncpg.Connection | asyncpg.Pool, booking_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT seq, at, action, actor::text AS actor, channel, request_id, reason, policy_version,"
        " detail::text AS detail FROM audit_trail WHERE booking_id = $1 ORDER BY seq",
        booking_id,
    )


async def list_bookings(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    practice_ids: list[str] | None,  # None: every practice
    status: str | None,
    practitioner_id: str | None,
    starts_from: datetime | None,
    starts_before: datetime | None,
    limit: int,
    offset: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {BOOKING_COLUMNS} FROM bookings"
        " WHERE ($1::text[] IS NULL OR practice_id = ANY($1)) AND ($2::text IS NULL OR status = $2)"
        " AND ($3::text IS NULL OR practitioner_id = $3)"
        " AND ($4::timestamptz IS NULL OR starts_at >= $4) AND ($5::timestamptz IS NULL OR starts_at < $5)"
        " ORDER BY starts_at, booking_id LIMIT $6 OFFSET $7",
        practice_ids,
        status,
        practitioner_id,
        starts_from,
        starts_before,
        limit,
        offset,
    )


async def upsert_practice(
    conn: asyncpg.Connection, practice_id: str, waitlist_enabled: bool, offer_minutes: int
) -> None:
    await conn.execute(
        "INSERT INTO practices (practice_id, waitlist_enabled, offer_minutes) VALUES ($1, $2, $3)"
        " ON CONFLICT (practice_id) DO UPDATE SET waitlist_enabled = $2, offer_minutes = $3, updated_at = now()",
        practice_id,
        waitlist_enabled,
        offer_minutes,
    )


async def practices_of(conn: asyncpg.Connection, practice_ids: list[str]) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT practice_id, waitlist_enabled, offer_minutes FROM practices WHERE practice_id = ANY($1::text[])",
        practice_ids,
    )
    return {r["practice_id"]: r for r in rows}


async def join_waitlist(conn: asyncpg.Connection, w: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO waitlist (waitlist_id, practice_id, patient_id, service_code, practitioner_id, joined_at)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (waitlist_id) DO NOTHING",
        w["waitlist_id"],
        w["practice_id"],
        w["patient_id"],
        w["service_code"],
        w["practitioner_id"],
        w["joined_at"],
    )


async def lock_waiting(conn: asyncpg.Connection, practice_id: str, booking_id: str) -> list[asyncpg.Record]:
    """Waiting patients of a practice not yet offered this slot, oldest first, locked."""
    return await conn.fetch(
        "SELECT waitlist_id, service_code, practitioner_id, joined_at FROM waitlist w"
        " WHERE practice_id = $1 AND status = 'waiting'"
        " AND NOT EXISTS (SELECT 1 FROM slot_offers o WHERE o.booking_id = $2 AND o.waitlist_id = w.waitlist_id)"
        " ORDER BY joined_at, waitlist_id LIMIT 500 FOR UPDATE SKIP LOCKED",
        practice_id,
        booking_id,
    )


async def add_offer(
    conn: asyncpg.Connection,
    offer_id: str,
    booking_id: str,
    waitlist_id: str,
    offered_at: datetime,
    expires_at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO slot_offers (offer_id, booking_id, waitlist_id, offered_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        offer_id,
        booking_id,
        waitlist_id,
        offered_at,
        expires_at,
    )
    await conn.execute("UPDATE waitlist SET status = 'offered' WHERE waitlist_id = $1", waitlist_id)


async def claim_expired_offers(conn: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    """Open offers past their expiry, marked expired (their patients wait again); skip-locked
    so replicas share the work and never expire one offer twice."""
    rows = await conn.fetch(
        "SELECT offer_id, booking_id, waitlist_id, expires_at FROM slot_offers"
        " WHERE status = 'open' AND expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        limit,
    )
    if rows:
        await conn.execute(
            "UPDATE slot_offers SET status = 'expired' WHERE offer_id = ANY($1::text[])", [r["offer_id"] for r in rows]
        )
        await conn.execute(
            "UPDATE waitlist SET status = 'waiting' WHERE waitlist_id = ANY($1::text[]) AND status = 'offered'",
            [r["waitlist_id"] for r in rows],
        )
    return rows


async def accept_offer_for(
    conn: asyncpg.Connection, patient_id: str, practice_id: str, starts_at: datetime
) -> str | None:
    """A new booking that takes an offered slot closes the offer; returns the offer id."""
    row = await conn.fetchrow(
        "UPDATE slot_offers o SET status = 'accepted' FROM waitlist w, bookings b"
        " WHERE o.status = 'open' AND w.waitlist_id = o.waitlist_id AND b.booking_id = o.booking_id"
        " AND w.patient_id = $1 AND b.practice_id = $2 AND b.starts_at = $3"
        " RETURNING o.offer_id, o.waitlist_id",
        patient_id,
        practice_id,
        starts_at,
    )
    if row is None:
        return None
    await conn.execute("UPDATE waitlist SET status = 'booked' WHERE waitlist_id = $1", row["waitlist_id"])
    return row["offer_id"]


async def mark_released_many(conn: asyncpg.Connection, releases: list[tuple[str, datetime]]) -> set[str]:
    """Mark each (booking_id, at) slot released unless it was before; the ids marked now."""
    if not releases:
        return set()
    rows = await conn.fetch(
        "UPDATE bookings b SET slot_released_at = r.at FROM unnest($1::text[], $2::timestamptz[]) AS r(booking_id, at)"
        " WHERE b.booking_id = r.booking_id AND b.slot_released_at IS NULL RETURNING b.booking_id",
        [r[0] for r in releases],
        [r[1] for r in releases],
    )
    return {r["booking_id"] for r in rows}


async def future_bookings_of(conn: asyncpg.Connection, professional_id: str, after: datetime) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE professional_id = $1 AND status = 'scheduled'"
        " AND starts_at > $2 ORDER BY starts_at FOR UPDATE",
        professional_id,
        after,
    )


REPORT_GROUPS = {"practice": "practice_id", "practitioner": "practitioner_id", "service": "service_code"}


async def report(
    pool: asyncpg.Pool,
    *,
    group_by: str,
    practice_ids: list[str] | None,  # None: every practice
    starts_from: datetime,
    starts_before: datetime,
) -> list[asyncpg.Record]:
    column = REPORT_GROUPS[group_by]  # a fixed column name, never user text
    return await pool.fetch(
        f"SELECT practice_id, {column} AS key, count(*) AS bookings,"
        " count(*) FILTER (WHERE status = 'cancelled') AS cancelled,"
        " count(*) FILTER (WHERE status = 'cancelled' AND classification = 'timely') AS timely,"
        " count(*) FILTER (WHERE status = 'cancelled' AND classification = 'late') AS late,"
        " count(*) FILTER (WHERE status = 'cancelled' AND classification = 'no_show') AS cancelled_as_no_show,"
        " count(*) FILTER (WHERE status = 'no_show') AS no_shows,"
        " count(*) FILTER (WHERE status = 'completed') AS completed"
        " FROM bookings WHERE starts_at >= $1 AND starts_at < $2 AND ($3::text[] IS NULL OR practice_id = ANY($3))"
        f" GROUP BY practice_id, {column} ORDER BY practice_id, {column}",
        starts_from,
        starts_before,
        practice_ids,
    )


async def record_suspension(conn: asyncpg.Connection, professional_id: str, suspended_at: datetime, cause: str) -> None:
    await conn.execute(
        "INSERT INTO suspended_professionals (professional_id, suspended_at, cause_event_id) VALUES ($1, $2, $3)"
        " ON CONFLICT (professional_id) DO NOTHING",
        professional_id,
        suspended_at,
        cause,
    )


async def suspension_of(conn: asyncpg.Connection, professional_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT suspended_at, cause_event_id FROM suspended_professionals WHERE professional_id = $1", professional_id
    )


# --- second release (issue 17): arrivals, the no-show sweep, accepted offers, reinstatement ------


async def set_no_show_sweep(
    conn: asyncpg.Connection, practice_id: str, *, enabled: bool, grace_minutes: int, at: datetime
) -> None:
    """The practice's sweep settings (the practice row exists: `upsert_practice` ran first);
    `no_show_sweep_since` is set when the sweep is turned on and kept while it stays on."""
    await conn.execute(
        "UPDATE practices SET no_show_sweep_enabled = $2, no_show_grace_minutes = $3,"
        " no_show_sweep_since = CASE WHEN NOT $2 THEN NULL"
        " WHEN no_show_sweep_enabled AND no_show_sweep_since IS NOT NULL THEN no_show_sweep_since ELSE $4 END"
        " WHERE practice_id = $1",
        practice_id,
        enabled,
        grace_minutes,
        at,
    )


async def mark_arrived(conn: asyncpg.Connection, booking_id: str, arrived_at: datetime) -> bool:
    """Record the first arrival of a (locked, scheduled) booking; False when it arrived before."""
    return bool(
        await conn.fetchval(
            "UPDATE bookings SET arrived_at = $2, updated_at = now() WHERE booking_id = $1 AND arrived_at IS NULL"
            " RETURNING true",
            booking_id,
            arrived_at,
        )
    )


async def claim_unattended(conn: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    """Scheduled bookings of practices that sweep, with no arrival and not reported yet, whose
    start + grace has come by `now` (and that started after the sweep was turned on): locked
    skip-locked, so replicas share them, and marked reported in this transaction, so each is
    reported once."""
    rows = await conn.fetch(
        "SELECT b.booking_id, b.practice_id, b.starts_at, b.status, p.no_show_grace_minutes AS grace_minutes,"
        " p.no_show_sweep_since AS sweep_since"
        " FROM practices p JOIN bookings b ON b.practice_id = p.practice_id"
        " WHERE p.no_show_sweep_enabled AND b.status = 'scheduled' AND b.arrived_at IS NULL"
        " AND b.no_show_suspected_at IS NULL AND b.starts_at >= p.no_show_sweep_since"
        " AND b.starts_at + make_interval(mins => p.no_show_grace_minutes) <= $1"
        " ORDER BY b.starts_at, b.booking_id LIMIT $2 FOR UPDATE OF b SKIP LOCKED",
        now,
        limit,
    )
    if rows:
        await conn.execute(
            "UPDATE bookings b SET no_show_suspected_at = r.at FROM unnest($1::text[], $2::timestamptz[]) AS r(booking_id, at)"
            " WHERE b.booking_id = r.booking_id",
            [r["booking_id"] for r in rows],
            [r["starts_at"] + timedelta(minutes=r["grace_minutes"]) for r in rows],
        )
    return rows


async def lock_offer(conn: asyncpg.Connection, offer_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT offer_id, booking_id, waitlist_id, expires_at, status, filled_at FROM slot_offers"
        " WHERE offer_id = $1 FOR UPDATE",
        offer_id,
    )


async def fill_offer(conn: asyncpg.Connection, offer_id: str, *, new_booking_id: str, at: datetime) -> None:
    """The offer accepted and its slot filled; its patient's waitlist entry booked."""
    waitlist_id = await conn.fetchval(
        "UPDATE slot_offers SET status = 'accepted', new_booking_id = $2, filled_at = $3 WHERE offer_id = $1"
        " RETURNING waitlist_id",
        offer_id,
        new_booking_id,
        at,
    )
    await conn.execute("UPDATE waitlist SET status = 'booked' WHERE waitlist_id = $1", waitlist_id)


async def end_suspension(conn: asyncpg.Connection, professional_id: str, reinstated_at: datetime) -> bool:
    """Forget a suspension that began before `reinstated_at`; False when there was none."""
    return bool(
        await conn.fetchval(
            "DELETE FROM suspended_professionals WHERE professional_id = $1 AND suspended_at <= $2 RETURNING true",
            professional_id,
            reinstated_at,
        )
    )

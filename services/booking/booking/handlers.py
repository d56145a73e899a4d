"""One async function per message type: load, decide, save, emit.

Handlers reach the database only through their ports (`BookingDeps`, the unit's deps), so
tests/handlers runs them against fakes. They read no clock: a request is decided at its own
time when that is believed, else at its Kafka record's time (`TimeTrust`), so a replay decides
the same. The offer-expiry job calls repository.py itself and decides at its round's `now`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared.background import DueWork, WorkUnit
from shared.consumer import SetBased, Unit
from shared.contracts.base import Money
from shared.contracts.booking import (
    BookingCancellationRejected,
    BookingCancelled,
    BookingCompleted,
    BookingNoShowRecorded,
    BookingNoShowRejected,
    BookingSlotOffered,
    BookingSlotReleased,
    BookingSnapshot,
    CancellationAssessmentRequested,
)
from shared.contracts.common import Decision, valid_id
from shared.contracts.policy import CancellationAssessed
from shared.contracts.scoring import AccountSuspended
from shared.contracts.upstream import (
    BookingCancellationRequested,
    BookingNoShowReported,
    BookingRescheduled,
    BookingScheduled,
    PracticeConfigured,
    UpstreamBookingCompleted,
    WaitlistJoined,
)
from shared.topics import BOOKING_EVENTS, POLICY_REQUESTS

from . import domain
from . import repository as sql_repository
from .settings import BookingSettings


@dataclass(frozen=True)
class BookingDeps:
    """The handlers' ports and the request-time tolerance, built by `app.definition`'s `make_deps`."""

    time_trust: domain.TimeTrust = field(default_factory=domain.TimeTrust)
    # repository.py, or anything with the same functions (tests/handlers: an in-memory fake).
    repository: Any = sql_repository


def _money(amount: Any, currency: str | None) -> Money | None:
    return Money.new(amount=amount, currency=currency) if amount is not None and currency else None


def _snapshot(b: Any) -> BookingSnapshot:
    return BookingSnapshot.new(
        starts_at=b["starts_at"],
        ends_at=b["ends_at"],
        status=b["status"],
        practitioner_id=b["practitioner_id"],
        service_code=b["service_code"],
        professional_id=b["professional_id"],
        series_id=b["series_id"],
        patient_portal_account=b["patient_portal_account"],
        patient_card_on_file=b["patient_card_on_file"],
        patient_id=b["patient_id"],
        deposit=_money(b["deposit_amount"], b["deposit_currency"]),
        price=_money(b["price_amount"], b["price_currency"]),
    )


async def schedule_booking(unit: Unit[BookingDeps], event: BookingScheduled) -> None:
    repository = unit.deps.repository
    inserted = await repository.insert_booking(
        unit.conn,
        {
            "booking_id": event.booking_id,
            "practice_id": event.practice_id,
            "practitioner_id": event.practitioner_id,
            "service_code": event.service_code,
            "starts_at": event.starts_at,
            "ends_at": event.ends_at,
            "patient_id": event.patient.patient_id,
            "patient_portal_account": event.patient.portal_account,
            "patient_card_on_file": event.patient.card_on_file,
            "professional_id": event.professional_id,
            "series_id": event.series_id,
            "deposit_amount": event.deposit.amount if event.deposit else None,
            "deposit_currency": event.deposit.currency if event.deposit else None,
            "price_amount": event.price.amount if event.price else None,
            "price_currency": event.price.currency if event.price else None,
        },
    )
    if not inserted:
        return
    await repository.audit(unit.conn, event.booking_id, at=unit.event.envelope.time, action="scheduled")
    if event.professional_id is not None:
        suspension = await repository.suspension_of(unit.conn, event.professional_id)
        if suspension is not None and event.starts_at > suspension["suspended_at"]:
            booking = await repository.lock_booking(unit.conn, event.booking_id)
            await _cancel_by_system(
                unit, booking, suspended_at=suspension["suspended_at"], cause=suspension["cause_event_id"]
            )
            return
    offer_id = await repository.accept_offer_for(
        unit.conn, event.patient.patient_id, event.practice_id, event.starts_at
    )
    if offer_id is not None:
        await repository.audit(
            unit.conn,
            event.booking_id,
            at=unit.event.envelope.time,
            action="waitlist_offer_taken",
            detail={"offer_id": offer_id},
        )


async def reschedule_booking(unit: Unit[BookingDeps], event: BookingRescheduled) -> None:
    repository = unit.deps.repository
    booking = await repository.lock_booking(unit.conn, event.booking_id)
    if booking is None or booking["status"] != "scheduled":
        raise LookupError(f"booking {event.booking_id} is unknown or no longer scheduled; it cannot be rescheduled")
    await repository.reschedule(unit.conn, event.booking_id, event.starts_at, event.ends_at)
    await repository.audit(
        unit.conn,
        event.booking_id,
        at=unit.event.envelope.time,
        action="rescheduled",
        detail={"from": booking["starts_at"].isoformat(), "to": event.starts_at.isoformat()},
    )


async def complete_booking(unit: Unit[BookingDeps], event: UpstreamBookingCompleted) -> None:
    repository = unit.deps.repository
    booking = await repository.lock_booking(unit.conn, event.booking_id)
    if booking is None:
        raise LookupError(f"booking {event.booking_id} is unknown; it cannot be completed")
    if booking["status"] != "scheduled":
        await repository.audit(
            unit.conn,
            event.booking_id,
            at=event.completed_at,
            action="completion_ignored",
            detail={"status": booking["status"]},
        )
        return
    await repository.close_booking(unit.conn, [event.booking_id], status="completed", closed_at=event.completed_at)
    await repository.audit(unit.conn, event.booking_id, at=event.completed_at, action="completed")
    unit.emit(
        BOOKING_EVENTS,
        BookingCompleted.new(
            booking_id=event.booking_id, completed_at=event.completed_at, professional_id=booking["professional_id"]
        ),
        subject=event.booking_id,
    )


def _claim_checked(claimed: datetime, unit: Unit[BookingDeps]) -> tuple[datetime, dict[str, str]]:
    """The time to decide by, and what the audit trail says when the claim was not believed."""
    at = unit.deps.time_trust.decide_at(claimed, unit.record_time)
    return at, ({} if at == claimed else {"claimed_at": claimed.isoformat(), "decided_at": "record_time"})


Audit = list[dict[str, Any]]  # audit-trail entries of a set, written at once (repository.audit_many)


def _entry(booking_id: str, *, at: datetime, action: str, **fields: Any) -> dict[str, Any]:
    return {"booking_id": booking_id, "at": at, "action": action, **fields}


async def request_cancellations(
    units: Sequence[Unit[BookingDeps]], events: Sequence[BookingCancellationRequested]
) -> None:
    """Cancellation requests, set-based: the bookings locked in one statement, the requests
    recorded in one, the audit trail written in one."""
    conn, repository = units[0].conn, units[0].deps.repository
    bookings = await repository.lock_bookings(conn, [e.booking_id for e in events])
    audit: Audit = []
    asks: list[_Ask] = []
    for unit, event in zip(units, events, strict=True):
        at, distrust = _claim_checked(event.requested_at, unit)
        claimed_at = event.requested_at if distrust else None
        event = event.model_copy(update={"requested_at": at})
        booking = bookings.get(event.booking_id)
        rejection = domain.check_request(booking["status"] if booking else None, event.reason_text)
        audit.append(
            _entry(
                event.booking_id,
                at=at,
                action="cancellation_requested",
                actor=event.actor.to_json_dict(),
                channel=event.channel,
                request_id=event.request_id,
                reason=event.reason_code,
                detail={"scope": event.scope, "fee_decision": event.fee_decision, **distrust},
            )
        )
        if rejection is not None:
            _reject(unit, event.booking_id, event.request_id, rejection, kind="cancellation", at=at, audit=audit)
            continue
        asks.append(_Ask(unit, booking, event.request_id, "cancellation", event, claimed_at))
    await _ask_policy(asks, audit)
    await repository.audit_many(conn, audit)


request_cancellation = SetBased(request_cancellations)


async def report_no_shows(units: Sequence[Unit[BookingDeps]], events: Sequence[BookingNoShowReported]) -> None:
    """No-show reports, set-based as cancellation requests are."""
    conn, repository = units[0].conn, units[0].deps.repository
    bookings = await repository.lock_bookings(conn, [e.booking_id for e in events])
    audit: Audit = []
    asks: list[_Ask] = []
    for unit, event in zip(units, events, strict=True):
        at, distrust = _claim_checked(event.reported_at, unit)
        claimed_at = event.reported_at if distrust else None
        event = event.model_copy(update={"reported_at": at})
        booking = bookings.get(event.booking_id)
        rejection = domain.check_request(booking["status"] if booking else None, None)
        audit.append(
            _entry(
                event.booking_id,
                at=at,
                action="no_show_reported",
                actor=event.actor.to_json_dict(),
                request_id=event.request_id,
                detail={"party": event.party, "code": event.code, "fee_decision": event.fee_decision, **distrust},
            )
        )
        if rejection is not None:
            _reject(unit, event.booking_id, event.request_id, rejection, kind="no_show", at=at, audit=audit)
            continue
        asks.append(_Ask(unit, booking, event.request_id, "no_show", event, claimed_at))
    await _ask_policy(asks, audit)
    await repository.audit_many(conn, audit)


report_no_show = SetBased(report_no_shows)


@dataclass(frozen=True)
class _Ask:
    """A request to pass to the policy: its unit, its booking as locked, and the request."""

    unit: Unit[BookingDeps]
    booking: Any
    request_id: str
    kind: str
    event: Any
    claimed_at: datetime | None = None


async def _ask_policy(asks: Sequence[_Ask], audit: Audit) -> None:
    """Record the requests as pending (one statement) and ask the policy about the new ones."""
    if not asks:
        return
    unit0 = asks[0].unit
    used_for = await unit0.deps.repository.add_pending_requests(
        unit0.conn, [(a.request_id, a.booking["booking_id"], a.kind, a.event.to_json_dict()) for a in asks]
    )
    for a in asks:
        unit, booking, kind, event = a.unit, a.booking, a.kind, a.event
        at = event.requested_at if kind == "cancellation" else event.reported_at
        if used_for[a.request_id] == booking["booking_id"]:
            continue  # the same request again (resubmitted by upstream): it is with the policy already
        if used_for[a.request_id] is not None:
            rejection = domain.Rejection("invalid_request", domain.REJECTION_MESSAGES["request_id_reused"])
            _reject(unit, booking["booking_id"], a.request_id, rejection, kind=kind, at=at, audit=audit)
            continue
        fields: dict[str, Any] = {
            "booking_id": booking["booking_id"],
            "request_id": a.request_id,
            "practice_id": booking["practice_id"],
            "kind": kind,
            "booking": _snapshot(booking),
            "actor": event.actor,
            "fee_decision": event.fee_decision,
            "claimed_at": a.claimed_at,
        }
        if kind == "cancellation":
            fields |= {
                "requested_at": at,
                "channel": event.channel,
                "reason_code": event.reason_code,
                "reason_text": event.reason_text,
                "scope": event.scope,
                "deposit_decision": event.deposit_decision,  # staff's; the policy checks who may
            }
        else:
            fields |= {"requested_at": at, "party": event.party, "code": event.code}
        unit.emit(POLICY_REQUESTS, CancellationAssessmentRequested.new(**fields), subject=booking["booking_id"])


def _reject(
    unit: Unit[BookingDeps],
    booking_id: str,
    request_id: str,
    rejection: domain.Rejection,
    *,
    kind: str,
    at: Any,
    audit: Audit,
) -> None:
    model = BookingCancellationRejected if kind == "cancellation" else BookingNoShowRejected
    unit.emit(
        BOOKING_EVENTS,
        model.new(booking_id=booking_id, request_id=request_id, reason=rejection.reason, message=rejection.message),
        subject=booking_id,
    )
    audit.append(
        _entry(
            booking_id,
            at=at,
            action=f"{kind}_rejected",
            request_id=request_id,
            reason=rejection.reason,
            detail={"message": rejection.message},
        )
    )


async def apply_decisions(units: Sequence[Unit[BookingDeps]], events: Sequence[CancellationAssessed]) -> None:
    """The policy's decisions, set-based: the pending requests taken in one statement, the
    bookings locked in one, closed in one, the trail written in one, and the freed slots offered
    or released (`offer_or_release`, a fixed number of statements too unless a practice keeps a
    waitlist)."""
    conn, repository = units[0].conn, units[0].deps.repository
    pending = await repository.take_pending_requests(conn, [e.request_id for e in events])
    missing = [e for e in events if e.request_id not in pending]
    if missing:
        raise LookupError(f"no pending request {missing[0].request_id} for booking {missing[0].booking_id}")
    bookings = await repository.lock_bookings(conn, [e.booking_id for e in events])
    audit: Audit = []
    closes: list[dict[str, Any]] = []
    freed: list[tuple[Unit[BookingDeps], list[str], datetime]] = []
    for unit, event in zip(units, events, strict=True):
        taken = pending[event.request_id]
        kind = taken["kind"]
        booking = bookings[event.booking_id]
        original = (BookingCancellationRequested if kind == "cancellation" else BookingNoShowReported).model_validate(
            json.loads(taken["request"])
        )
        at = original.requested_at if kind == "cancellation" else original.reported_at
        # The booking may have changed while the policy decided (another request won the race).
        rejection = domain.check_request(booking["status"], None)
        if rejection is None and not event.allowed:
            rejection = domain.Rejection(
                event.rejection_reason or "not_allowed", event.explanation or "This request is not allowed."
            )
        audit.append(
            _entry(
                event.booking_id,
                at=at,
                action=f"{kind}_assessed",
                request_id=event.request_id,
                reason=event.rejection_reason,
                policy_version=event.policy_version,
                detail={
                    "allowed": event.allowed,
                    "classification": event.classification,
                    "explanation": event.explanation,
                },
            )
        )
        if rejection is not None:
            _reject(unit, event.booking_id, event.request_id, rejection, kind=kind, at=at, audit=audit)
            continue
        decision = Decision.model_validate(event.to_json_dict())
        if kind == "cancellation":
            ids = await _cancel(unit, booking, original, decision, closes, audit)
            freed.append((unit, ids, original.requested_at))
        else:
            _record_no_show(unit, booking, original, decision, closes, audit)
    await repository.close_bookings(conn, closes)
    await repository.audit_many(conn, audit)
    if freed:
        slots = await offer_or_release(conn, [(b, at) for _, ids, at in freed for b in ids], repository=repository)
        for unit, ids, _ in freed:
            for booking_id in ids:
                for slot in slots.get(booking_id, []):
                    unit.emit(BOOKING_EVENTS, slot, subject=slot.booking_id)


apply_decision = SetBased(apply_decisions)


async def _cancel(
    unit: Unit[BookingDeps],
    booking: Any,
    request: BookingCancellationRequested,
    decision: Decision,
    closes: list[dict[str, Any]],
    audit: Audit,
) -> list[str]:
    """The booking (and, for this_and_future, the later ones of its series) to close, its trail
    and its event; returns the ids of the slots it frees."""
    label = domain.status_label(request.actor.kind, request.channel)
    series_ids: list[str] = []
    if request.scope == "this_and_future" and booking["series_id"]:
        later = await unit.deps.repository.lock_later_in_series(unit.conn, booking["series_id"], booking["starts_at"])
        series_ids = [row["booking_id"] for row in later]
    for booking_id in [booking["booking_id"], *series_ids]:
        closes.append(
            {
                "booking_id": booking_id,
                "status": "cancelled",
                "closed_at": request.requested_at,
                "status_label": label,
                "classification": decision.classification,
            }
        )
        audit.append(
            _entry(
                booking_id,
                at=request.requested_at,
                action="cancelled",
                actor=request.actor.to_json_dict(),
                channel=request.channel,
                request_id=request.request_id,
                reason=request.reason_code,
                policy_version=decision.policy_version,
                detail={
                    "status_label": label,
                    "classification": decision.classification,
                    "series_of": booking["booking_id"] if booking_id != booking["booking_id"] else None,
                },
            )
        )
    unit.emit(
        BOOKING_EVENTS,
        BookingCancelled.new(
            booking_id=booking["booking_id"],
            request_id=request.request_id,
            practice_id=booking["practice_id"],
            patient_id=booking["patient_id"],
            professional_id=booking["professional_id"],
            practitioner_id=booking["practitioner_id"],
            service_code=booking["service_code"],
            starts_at=booking["starts_at"],
            ends_at=booking["ends_at"],
            cancelled_at=request.requested_at,
            actor=request.actor,
            channel=request.channel,
            status_label=label,
            reason_code=request.reason_code,
            reason_text=request.reason_text,
            classification=decision.classification,
            decision=decision,
            series_booking_ids=series_ids,
            deposit=_money(booking["deposit_amount"], booking["deposit_currency"]),
        ),
        subject=booking["booking_id"],
    )
    return [booking["booking_id"], *series_ids]


def _record_no_show(
    unit: Unit[BookingDeps],
    booking: Any,
    report: BookingNoShowReported,
    decision: Decision,
    closes: list[dict[str, Any]],
    audit: Audit,
) -> None:
    closes.append(
        {
            "booking_id": booking["booking_id"],
            "status": "no_show",
            "closed_at": report.reported_at,
            "classification": "no_show",
        }
    )
    audit.append(
        _entry(
            booking["booking_id"],
            at=report.reported_at,
            action="no_show_recorded",
            actor=report.actor.to_json_dict(),
            request_id=report.request_id,
            reason=report.code,
            policy_version=decision.policy_version,
            detail={"party": report.party},
        )
    )
    unit.emit(
        BOOKING_EVENTS,
        BookingNoShowRecorded.new(
            booking_id=booking["booking_id"],
            request_id=report.request_id,
            practice_id=booking["practice_id"],
            patient_id=booking["patient_id"],
            professional_id=booking["professional_id"],
            party=report.party,
            code=report.code,
            starts_at=booking["starts_at"],
            recorded_at=report.reported_at,
            decision=decision,
            deposit=_money(booking["deposit_amount"], booking["deposit_currency"]),
        ),
        subject=booking["booking_id"],
    )


# --- waitlist and slot release -----------------------------------------------------------------

NAMESPACE = uuid.UUID("0b4f7a52-64c4-4c56-9a3e-8f1c1a1d2e01")


def derived_id(*parts: str) -> str:
    """A stable id from what caused it, so a redelivery or a rerun makes the same one."""
    return str(uuid.uuid5(NAMESPACE, "/".join(parts)))


async def configure_practice(unit: Unit[BookingDeps], event: PracticeConfigured) -> None:
    await unit.deps.repository.upsert_practice(
        unit.conn, event.practice_id, event.waitlist.enabled, event.waitlist.offer_minutes
    )


async def join_waitlist(unit: Unit[BookingDeps], event: WaitlistJoined) -> None:
    await unit.deps.repository.join_waitlist(
        unit.conn,
        {
            "waitlist_id": event.waitlist_id,
            "practice_id": event.practice_id,
            "patient_id": event.patient.patient_id,
            "service_code": event.service_code,
            "practitioner_id": event.practitioner_id,
            "joined_at": event.joined_at,
        },
    )


async def offer_or_release(
    conn: Any,
    freed: list[tuple[str, datetime]],
    *,
    repository: Any = sql_repository,  # the handlers' port; the offer-expiry job's repository.py itself
) -> dict[str, list[BookingSlotOffered | BookingSlotReleased]]:
    """For each freed slot (booking id, when): an offer to the longest-waiting match when the
    practice keeps a waitlist, otherwise (or when nobody is left) its release for online booking.
    The bookings, their practices, the releases and the trail take one statement each; a practice
    that keeps a waitlist takes two or three more per slot."""
    events: dict[str, list[BookingSlotOffered | BookingSlotReleased]] = {}
    if not freed:
        return events
    bookings = await repository.get_bookings(conn, [b for b, _ in freed])
    practices = await repository.practices_of(conn, sorted({b["practice_id"] for b in bookings.values()}))
    audit: Audit = []
    releases: list[tuple[str, datetime]] = []
    for booking_id, now in freed:
        booking = bookings[booking_id]
        practice = practices.get(booking["practice_id"])
        if practice is not None and practice["waitlist_enabled"]:
            waiting = [
                domain.WaitingPatient(r["waitlist_id"], r["service_code"], r["practitioner_id"], r["joined_at"])
                for r in await repository.lock_waiting(conn, booking["practice_id"], booking_id)
            ]
            chosen = domain.next_in_line(booking["service_code"], booking["practitioner_id"], waiting)
            if chosen is not None:
                offer_id = derived_id("offer", booking_id, chosen.waitlist_id)
                expires_at = now + timedelta(minutes=practice["offer_minutes"])
                await repository.add_offer(conn, offer_id, booking_id, chosen.waitlist_id, now, expires_at)
                audit.append(
                    _entry(
                        booking_id,
                        at=now,
                        action="slot_offered",
                        detail={
                            "offer_id": offer_id,
                            "waitlist_id": chosen.waitlist_id,
                            "expires_at": expires_at.isoformat(),
                        },
                    )
                )
                events.setdefault(booking_id, []).append(
                    BookingSlotOffered.new(
                        offer_id=offer_id, booking_id=booking_id, waitlist_id=chosen.waitlist_id, expires_at=expires_at
                    )
                )
                continue
        releases.append((booking_id, now))
    released = await repository.mark_released_many(conn, releases)
    for booking_id, now in releases:
        if booking_id not in released:
            continue
        booking = bookings[booking_id]
        audit.append(_entry(booking_id, at=now, action="slot_released"))
        events.setdefault(booking_id, []).append(
            BookingSlotReleased.new(
                booking_id=booking_id,
                practice_id=booking["practice_id"],
                starts_at=booking["starts_at"],
                ends_at=booking["ends_at"],
                practitioner_id=booking["practitioner_id"],
                service_code=booking["service_code"],
            )
        )
    await repository.audit_many(conn, audit)
    return events


def offer_expiry(settings: BookingSettings) -> DueWork[asyncpg.Record, BookingDeps]:
    """Background job: offers expire on time even when no message arrives; the slot goes to the
    next patient in line, or is released. Replicas share the work (skip-locked claims). The
    claim itself marks the offer expired, so an offer whose slot cannot be passed on (a failure
    for good, logged) is not taken again and does not hold up the others."""
    return DueWork(
        name="expire_offers",
        claim=sql_repository.claim_expired_offers,
        act=expire_offer,
        correlation=lambda offer: offer["offer_id"],
        key=lambda offer: offer["offer_id"],
        interval_seconds=settings.offer_check_interval_seconds,
        batch_size=settings.offer_expiry_batch_size,
    )


async def expire_offer(unit: WorkUnit[BookingDeps], offer: asyncpg.Record) -> None:
    """An expired offer (its patient waits again): audited, and its slot offered to the next in line or released."""
    await sql_repository.audit(
        unit.conn,
        offer["booking_id"],
        at=offer["expires_at"],
        action="slot_offer_expired",
        detail={"offer_id": offer["offer_id"], "waitlist_id": offer["waitlist_id"]},
    )
    slots = await offer_or_release(unit.conn, [(offer["booking_id"], unit.now)])
    for slot in slots.get(offer["booking_id"], []):
        unit.emit(BOOKING_EVENTS, slot, subject=slot.booking_id)


# --- suspension ----------------------------------------------------------------------------------


async def cancel_for_suspension(unit: Unit[BookingDeps], event: AccountSuspended) -> None:
    """Every future booking of a suspended professional is cancelled by the system, through
    the policy like any other cancellation (which decides: no penalty). The suspension is
    remembered, so a booking that arrives after it is cancelled as it arrives."""
    repository = unit.deps.repository
    await repository.record_suspension(unit.conn, event.professional_id, event.suspended_at, unit.event.id)
    for booking in await repository.future_bookings_of(unit.conn, event.professional_id, event.suspended_at):
        await _cancel_by_system(unit, booking, suspended_at=event.suspended_at, cause=unit.event.id)


async def _cancel_by_system(unit: Unit[BookingDeps], booking: Any, *, suspended_at: datetime, cause: str) -> None:
    repository = unit.deps.repository
    actor = {"kind": "system", "id": "scoring", "roles": []}
    request = BookingCancellationRequested.new(
        request_id=derived_id("suspension", cause, booking["booking_id"]),
        booking_id=booking["booking_id"],
        requested_at=suspended_at,
        actor=actor,
        channel="system",
        reason_code="professional_suspended",
        reason_text="The booked professional's account is suspended.",
    )
    audit: Audit = [
        _entry(
            booking["booking_id"],
            at=suspended_at,
            action="cancellation_requested",
            actor=actor,
            channel="system",
            request_id=request.request_id,
            reason="professional_suspended",
        )
    ]
    await _ask_policy([_Ask(unit, booking, request.request_id, "cancellation", request)], audit)
    await repository.audit_many(unit.conn, audit)


# --- requests we cannot read -------------------------------------------------------------------


def reject_unreadable(kind: str):
    """A cancellation or no-show request that breaks the contract is dead-lettered; when it
    still names its booking and request, the requester also gets a rejection they can act on."""
    model = BookingCancellationRejected if kind == "cancellation" else BookingNoShowRejected

    def reject(data: dict[str, Any], error: str, subject: str) -> list[tuple[str, Any, str]]:
        booking_id, request_id = valid_id(data.get("booking_id")), valid_id(data.get("request_id"))
        if booking_id is None or request_id is None:
            return []
        message = f"The request could not be read ({error.split(': ', 1)[-1]}); please correct it and send it again."
        return [
            (
                BOOKING_EVENTS,
                model.new(booking_id=booking_id, request_id=request_id, reason="invalid_request", message=message),
                booking_id,
            )
        ]

    return reject

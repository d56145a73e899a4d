"""One async function per message type: load, decide, save.

The consumer's transaction only *records* the messages to send (one delivery row per recipient
and channel, status pending, or skipped with the reason); it never talks to an SMTP server or
an SMS provider, so a rolled-back or redelivered batch can never have sent anything. The
sender (delivery.py) sends what was committed.

Handlers reach the database and the clock only through their ports (`HandlerDeps`, the unit's
deps), so tests/handlers runs them against fakes. They have no channel to send on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import asyncpg

from shared.consumer import Unit
from shared.contracts.billing import ChargeCreated, PaymentCaptured, PaymentFailed, PaymentRefunded
from shared.contracts.booking import (
    BookingCancellationRejected,
    BookingCancelled,
    BookingNoShowRecorded,
    BookingSlotOffered,
)
from shared.contracts.pms_sync import PmsManualUpdateRequired
from shared.contracts.scoring import AccountSuspended, HoldPlaced
from shared.contracts.upstream import (
    BookingCancellationRequested,
    BookingRescheduled,
    BookingScheduled,
    PracticeConfigured,
    WaitlistJoined,
)
from shared.logging import get_logger

from . import domain
from . import repository as sql_repository
from .delivery import Deps
from .rendering import Renderer
from .settings import NotificationSettings

log = get_logger(__name__)


class HandlerDeps(Protocol):
    """What a handler reaches through `unit.deps`: `NotificationDeps` in the service, fakes in
    tests/handlers. No channel: a handler records messages, the sender sends them."""

    @property
    def settings(self) -> NotificationSettings: ...

    @property
    def renderer(self) -> Renderer: ...

    @property
    def repository(self) -> Any: ...  # repository.py, or anything with the same functions

    @property
    def clock(self) -> Callable[[], datetime]: ...


@dataclass
class NotificationDeps(Deps):
    """The service's deps (`make_deps`): the sender's (`delivery.Deps`: settings, renderer,
    channels) and the handlers' own ports."""

    # repository.py, or anything with the same functions (tests/handlers: an in-memory fake).
    repository: Any = sql_repository
    # Whether a slot offer has expired by the time it is recorded.
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


# --- the contact directory ---------------------------------------------------------------------


async def configure_practice(unit: Unit[HandlerDeps], event: PracticeConfigured) -> None:
    await unit.deps.repository.upsert_practice(
        unit.conn,
        {
            "practice_id": event.practice_id,
            "name": event.name,
            "timezone": event.timezone,
            "locale": event.locale,
            "email": event.contact.email,
            "phone": event.contact.phone,
            "preferred_channel": event.contact.preferred_channel,
            "notify_practice_on_online_cancel": event.cancellation.notify_practice_on_online_cancel,
        },
        configured_at=unit.event.envelope.time,
    )


async def remember_patient(unit: Unit[HandlerDeps], event: BookingScheduled) -> None:
    repository = unit.deps.repository
    await repository.upsert_patient(
        unit.conn,
        {
            "booking_id": event.booking_id,
            "practice_id": event.practice_id,
            "patient_id": event.patient.patient_id,
            "first_name": event.patient.first_name,
            "email": event.patient.email,
            "phone": event.patient.phone,
            "locale": event.patient.locale,
            "starts_at": event.starts_at,
        },
        scheduled_at=unit.event.envelope.time,
    )
    contact = event.professional_contact
    if event.professional_id and contact is not None:
        await repository.upsert_professional(
            unit.conn,
            {
                "professional_id": event.professional_id,
                "practice_id": event.practice_id,
                "first_name": contact.first_name,
                "email": contact.email,
                "phone": contact.phone,
                "locale": contact.locale,
            },
            scheduled_at=unit.event.envelope.time,
        )


async def reschedule_booking(unit: Unit[HandlerDeps], event: BookingRescheduled) -> None:
    await unit.deps.repository.reschedule(unit.conn, event.booking_id, event.starts_at)


async def remember_request(unit: Unit[HandlerDeps], event: BookingCancellationRequested) -> None:
    # Only who asked and how: a rejection is told to the patient when the patient asked.
    await unit.deps.repository.remember_request(
        unit.conn, event.request_id, event.booking_id, event.actor.kind, event.channel, event.requested_at
    )


async def remember_waitlist_entry(unit: Unit[HandlerDeps], event: WaitlistJoined) -> None:
    """Store the waitlisted patient's contacts, then tell any offer that was waiting for them."""
    repository = unit.deps.repository
    await repository.lock_waitlist_entry(unit.conn, event.waitlist_id)
    await repository.upsert_waitlist_entry(
        unit.conn,
        {
            "waitlist_id": event.waitlist_id,
            "practice_id": event.practice_id,
            "patient_id": event.patient.patient_id,
            "first_name": event.patient.first_name,
            "email": event.patient.email,
            "phone": event.patient.phone,
            "locale": event.patient.locale,
            "joined_at": event.joined_at,
        },
    )
    waiting = await repository.untold_offers(unit.conn, event.waitlist_id)
    if waiting:
        entry = await repository.get_waitlist_entry(unit.conn, event.waitlist_id)
        for offer in waiting:
            await _tell_offer(unit, offer, entry)


# --- what to tell whom ---------------------------------------------------------------------------


async def notify_cancellation(unit: Unit[HandlerDeps], event: BookingCancelled) -> None:
    practice = await _practice(unit, event.practice_id)
    patient = _patient(await unit.deps.repository.get_patient(unit.conn, event.booking_id))
    suspension = domain.caused_by_suspension(event.actor.kind, event.reason_code)
    await _record(
        unit,
        domain.plan_cancellation(event.actor.kind, patient, practice),
        practice=practice,
        patient=patient,
        starts_at=event.starts_at,
        # A fee still in staff review is not told (it may be edited or waived).
        fee=(
            (event.decision.fee.amount, event.decision.fee.currency)
            if event.decision.fee is not None and domain.fee_is_final(event.decision)
            else None
        ),
        booking_id=event.booking_id,
        service_code=event.service_code,
        practitioner_id=event.practitioner_id,
        professional_id=event.professional_id,
        classification=event.classification,
        reason_code=event.reason_code,
        reason_text=event.reason_text,
        series_count=len(event.series_booking_ids),
        suspension=suspension,
        rebook_url=(
            domain.rebook_url(unit.deps.settings.portal_base_url, event.practice_id, event.booking_id)
            if event.actor.kind == "patient"
            else None
        ),
    )


async def notify_rejection(unit: Unit[HandlerDeps], event: BookingCancellationRejected) -> None:
    repository = unit.deps.repository
    patient_row = await repository.get_patient(unit.conn, event.booking_id)
    patient = _patient(patient_row)
    practice = await _practice(unit, patient_row["practice_id"]) if patient_row else domain.PracticeContact.unknown("")
    requester = await repository.requester_kind(unit.conn, event.request_id)
    await _record(
        unit,
        domain.plan_rejection(event.reason, requester, patient, practice),
        practice=practice,
        patient=patient,
        starts_at=patient_row["starts_at"] if patient_row else None,
        booking_id=event.booking_id,
        reason=event.reason,
        message=event.message,
    )


async def notify_slot_offer(unit: Unit[HandlerDeps], event: BookingSlotOffered) -> None:
    """The waitlisted patient, SMS and email, with the slot's time and the offer's expiry. When
    their contacts are not known yet, the offer waits for waitlist.joined (remember_waitlist_entry)."""
    repository = unit.deps.repository
    await repository.lock_waitlist_entry(unit.conn, event.waitlist_id)
    offer = {
        "offer_id": event.offer_id,
        "booking_id": event.booking_id,
        "waitlist_id": event.waitlist_id,
        "expires_at": event.expires_at,
        "event_id": unit.event.id,
        "correlation_id": unit.event.correlation_id,
    }
    await repository.remember_offer(unit.conn, offer)
    entry = await repository.get_waitlist_entry(unit.conn, event.waitlist_id)
    if entry is None:
        log.info("slot offer waits for the waitlist entry's contacts", offer_id=event.offer_id)
        return
    await _tell_offer(unit, offer, entry)


async def _tell_offer(unit: Unit[HandlerDeps], offer: Any, entry: asyncpg.Record | None) -> None:
    deps = unit.deps
    slot = await deps.repository.get_patient(unit.conn, offer["booking_id"])  # the slot's time
    practice_id = entry["practice_id"] if entry else (slot["practice_id"] if slot else "")
    practice = await _practice(unit, practice_id) if practice_id else domain.PracticeContact.unknown("")
    waitlisted = _patient(entry)
    await _record(
        unit,
        domain.plan_slot_offer(waitlisted, practice, expires_at=offer["expires_at"], now=deps.clock()),
        cause=Cause(
            key=f"booking.slot_offered/{offer['offer_id']}",
            event_id=offer["event_id"],
            event_type="booking.slot_offered",
            correlation_id=offer["correlation_id"],
        ),
        practice=practice,
        patient=waitlisted,
        starts_at=slot["starts_at"] if slot else None,
        booking_id=offer["booking_id"],
        expires=offer["expires_at"],
        offer_url=domain.offer_url(deps.settings.portal_base_url, practice.practice_id, offer["offer_id"]),
    )
    await deps.repository.mark_offer_told(unit.conn, offer["offer_id"])


async def note_no_show(unit: Unit[HandlerDeps], event: BookingNoShowRecorded) -> None:
    """A patient's no-show with a fee: whether it goes on the card; told once the fee is settled."""
    if event.party != "patient" or event.decision.fee is None:
        return  # nothing is charged to a patient: nothing to tell
    fee = await unit.deps.repository.merge_no_show(
        unit.conn, event.booking_id, event.practice_id, event.starts_at, event.decision.charge_card
    )
    await _tell_no_show_fee(unit, fee)


async def note_charge(unit: Unit[HandlerDeps], event: ChargeCreated) -> None:
    if event.kind == "late_cancellation":
        await _note_late_fee(unit, event)
        return
    if event.status == "pending_review":
        return  # not final: told once billing announces it due (approved or edited), never if waived
    fee = await unit.deps.repository.merge_no_show_charge(
        unit.conn,
        {
            "booking_id": event.booking_id,
            "charge_id": event.charge_id,
            "amount": event.amount,
            "currency": event.currency,
            "code": event.code,
            "code_system": event.code_system,
        },
    )
    if fee is None:
        log.warning("a second no-show charge for one booking; the first one is told", charge_id=event.charge_id)
        return
    await _tell_no_show_fee(unit, fee)


async def _note_late_fee(unit: Unit[HandlerDeps], event: ChargeCreated) -> None:
    """A late-cancellation fee is told with the cancellation, unless it was in staff review then
    (the cancellation quoted no fee): such a fee is told once, by email, when billing announces it
    final (`charge.created` again with status `due`, at the approved or edited amount). A fee
    waived in review is never announced due, so never told."""
    repository = unit.deps.repository
    at = unit.event.envelope.time
    if event.status == "pending_review":
        await repository.remember_fee_in_review(unit.conn, event.charge_id, event.booking_id, event.review_until, at)
        return
    if not await repository.mark_fee_final(unit.conn, event.charge_id, at):
        return  # never in review: the cancellation told it
    patient_row = await repository.get_patient(unit.conn, event.booking_id)
    practice_id = patient_row["practice_id"] if patient_row else ""
    practice = await _practice(unit, practice_id) if practice_id else domain.PracticeContact.unknown("")
    patient = _patient(patient_row)
    await _record(
        unit,
        domain.plan_late_fee(patient, practice),
        # One message per charge's final announcement, whichever envelope (re)delivers it.
        cause=Cause.of(unit, key=f"late_cancellation_fee/{event.charge_id}"),
        practice=practice,
        patient=patient,
        starts_at=patient_row["starts_at"] if patient_row else None,
        fee=(event.amount, event.currency),
        booking_id=event.booking_id,
        fee_code=event.code,
        fee_code_system=event.code_system,
    )


async def note_payment(unit: Unit[HandlerDeps], event: PaymentCaptured | PaymentFailed) -> None:
    outcome = "captured" if isinstance(event, PaymentCaptured) else "failed"
    fee = await unit.deps.repository.merge_no_show_payment(unit.conn, event.booking_id, event.charge_id, outcome)
    if fee is not None:
        await _tell_no_show_fee(unit, fee)


async def _tell_no_show_fee(unit: Unit[HandlerDeps], fee: asyncpg.Record) -> None:
    settlement = domain.no_show_fee_settlement(
        domain.NoShowFee(charge_id=fee["charge_id"], charge_card=fee["charge_card"], payment=fee["payment"])
    )
    if settlement is None:
        return
    patient_row = await unit.deps.repository.get_patient(unit.conn, fee["booking_id"])
    practice_id = fee["practice_id"] or (patient_row["practice_id"] if patient_row else "")
    practice = await _practice(unit, practice_id) if practice_id else domain.PracticeContact.unknown("")
    patient = _patient(patient_row)
    await _record(
        unit,
        domain.plan_no_show_fee(patient, practice),
        # One message per booking's no-show fee, whichever of the events completed the picture.
        cause=Cause.of(unit, key=f"no_show_fee/{fee['booking_id']}"),
        practice=practice,
        patient=patient,
        starts_at=fee["starts_at"] or (patient_row["starts_at"] if patient_row else None),
        fee=(fee["amount"], fee["currency"]),
        booking_id=fee["booking_id"],
        fee_code=fee["code"],
        fee_code_system=fee["code_system"],
        settlement=settlement,
    )


async def tell_refund(unit: Unit[HandlerDeps], event: PaymentRefunded) -> None:
    """The patient, by email, once per refund: a fee lowered or waived after it was paid."""
    patient_row = await unit.deps.repository.get_patient(unit.conn, event.booking_id)
    practice_id = patient_row["practice_id"] if patient_row else ""
    practice = await _practice(unit, practice_id) if practice_id else domain.PracticeContact.unknown("")
    patient = _patient(patient_row)
    await _record(
        unit,
        domain.plan_refund(patient, practice),
        cause=Cause.of(unit, key=f"payment.refunded/{event.refund_id}"),
        practice=practice,
        patient=patient,
        starts_at=patient_row["starts_at"] if patient_row else None,
        fee=(event.amount, event.currency),
        booking_id=event.booking_id,
        waived=event.reason == "waived",
    )


async def notify_hold(unit: Unit[HandlerDeps], event: HoldPlaced) -> None:
    """The professional, by email, with the hold's start and end in the booking's practice's time."""
    repository = unit.deps.repository
    professional = await repository.get_professional(unit.conn, event.professional_id)
    booking = await repository.get_patient(unit.conn, event.booking_id)
    practice = await _practice_of(unit, booking, professional)
    await _record(
        unit,
        domain.plan_professional_notice(domain.HOLD_TEMPLATE, _professional(professional), practice),
        cause=Cause.of(unit, key=f"hold.placed/{event.hold_id}"),
        practice=practice,
        patient=None,
        starts_at=booking["starts_at"] if booking else None,
        booking_id=event.booking_id,
        professional_id=event.professional_id,
        professional_first_name=professional["first_name"] if professional else None,
        hold_starts=event.starts_at,
        hold_ends=event.ends_at,
        hold_cause=event.cause,
    )


async def notify_suspension(unit: Unit[HandlerDeps], event: AccountSuspended) -> None:
    """The professional, by email: suspended, and their future bookings cancelled."""
    professional = await unit.deps.repository.get_professional(unit.conn, event.professional_id)
    practice = await _practice_of(unit, None, professional)
    await _record(
        unit,
        domain.plan_professional_notice(domain.SUSPENSION_TEMPLATE, _professional(professional), practice),
        cause=Cause.of(unit, key=f"account.suspended/{event.professional_id}/{event.suspended_at.isoformat()}"),
        practice=practice,
        patient=None,
        starts_at=None,
        professional_id=event.professional_id,
        professional_first_name=professional["first_name"] if professional else None,
        suspended=event.suspended_at,
        hold_count=len(event.holds),
    )


async def notify_manual_update(unit: Unit[HandlerDeps], event: PmsManualUpdateRequired) -> None:
    """The practice, through its preferred channel: staff must change their PMS by hand."""
    practice = await _practice(unit, event.practice_id)
    patient_row = await unit.deps.repository.get_patient(unit.conn, event.booking_id)
    await _record(
        unit,
        domain.plan_manual_update(practice),
        # A booking is cancelled or marked a no-show once: one alert per booking and action.
        cause=Cause.of(unit, key=f"pms.manual_update_required/{event.booking_id}/{event.action}"),
        practice=practice,
        patient=_patient(patient_row),
        starts_at=patient_row["starts_at"] if patient_row else None,
        booking_id=event.booking_id,
        pms_action=event.action,
        pms_integration=event.integration,
        pms_message=event.message,
    )


async def _practice_of(
    unit: Unit[HandlerDeps], booking: asyncpg.Record | None, professional: asyncpg.Record | None
) -> domain.PracticeContact:
    """The practice whose timezone and locale a professional's notice is written in: the
    booking's, else the one of the booking that named the professional, else none (UTC)."""
    practice_id = booking["practice_id"] if booking else (professional["practice_id"] if professional else None)
    return await _practice(unit, practice_id) if practice_id else domain.PracticeContact.unknown("")


def _professional(row: asyncpg.Record | None) -> domain.ProfessionalContact | None:
    if row is None:
        return None
    return domain.ProfessionalContact(
        first_name=row["first_name"], email=row["email"], phone=row["phone"], locale=row["locale"]
    )


async def _practice(unit: Unit[HandlerDeps], practice_id: str) -> domain.PracticeContact:
    row = await unit.deps.repository.get_practice(unit.conn, practice_id)
    if row is None:
        return domain.PracticeContact.unknown(practice_id)
    return domain.PracticeContact(
        practice_id=row["practice_id"],
        name=row["name"],
        timezone=row["timezone"],
        locale=row["locale"],
        email=row["email"],
        phone=row["phone"],
        preferred_channel=row["preferred_channel"],
        notify_practice_on_online_cancel=row["notify_practice_on_online_cancel"],
    )


def _patient(row: asyncpg.Record | None) -> domain.PatientContact | None:
    if row is None:
        return None
    return domain.PatientContact(
        first_name=row["first_name"], email=row["email"], phone=row["phone"], locale=row["locale"]
    )


@dataclass(frozen=True)
class Cause:
    """What a message answers: `key` names the fact (the notification id derives from it), the
    rest is the event recorded beside it. For the cancellation rows the key is the envelope id;
    for facts that can reach us more than once under new envelopes it is the fact's own id."""

    key: str
    event_id: str
    event_type: str
    correlation_id: str | None

    @classmethod
    def of(cls, unit: Unit[Any], key: str | None = None) -> Cause:
        event = unit.event
        return cls(key=key or event.id, event_id=event.id, event_type=event.type, correlation_id=event.correlation_id)


async def _record(
    unit: Unit[HandlerDeps],
    messages: list[domain.Message],
    *,
    practice: domain.PracticeContact,
    patient: domain.PatientContact | None,
    starts_at: datetime | None,
    fee: tuple[Decimal, str] | None = None,
    cause: Cause | None = None,
    **facts: Any,
) -> None:
    """One delivery row per planned message: pending with its rendered text, or skipped."""
    deps = unit.deps
    cause = cause or Cause.of(unit)
    for message in messages:
        row: dict[str, Any] = {
            "notification_id": domain.notification_id(cause.key, message.recipient, message.channel),
            "event_id": cause.event_id,
            "event_type": cause.event_type,
            "correlation_id": cause.correlation_id,
            "booking_id": facts.get("booking_id"),
            "professional_id": facts.get("professional_id"),
            "practice_id": practice.practice_id or None,
            "recipient": message.recipient,
            "channel": message.channel,
            "template": message.template,
            "locale": message.locale,
            "address": None,
            "subject": None,
            "body": None,
            "status": "skipped",
            "reason": message.skip_reason,
        }
        if not message.skipped:
            context = domain.template_context(
                message, starts_at=starts_at, practice=practice, patient=patient, fee=fee, **facts
            )
            rendered = deps.renderer.render(
                message.template, message.recipient, message.channel, message.locale, context
            )
            row |= {
                "address": message.address,
                "subject": rendered.subject,
                "body": rendered.body,
                "status": "pending",
                "reason": None,
            }
        if await deps.repository.record_delivery(unit.conn, row):
            log.debug(  # one line per message: debug, not info (the hot path)
                "notification recorded",
                notification_id=str(row["notification_id"]),
                recipient=message.recipient,
                channel=message.channel,
                template=message.template,
                status=row["status"],
                skip_reason=message.skip_reason,
            )

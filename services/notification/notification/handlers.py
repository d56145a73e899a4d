"""One async function per message type: load, decide, save.

The consumer's transaction only *records* the messages to send (one delivery row per recipient
and channel, status pending, or skipped with the reason); it never talks to an SMTP server or
an SMS provider, so a rolled-back or redelivered batch can never have sent anything. The
sender (delivery.py) sends what was committed.

Handlers reach the database and the clock only through their ports (`HandlerDeps`, the unit's
deps), so tests/handlers runs them against fakes. They have no channel to send on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import asyncpg

from shared.consumer import SetBased, Unit
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


async def reschedule_bookings(units: Sequence[Unit[HandlerDeps]], events: Sequence[BookingRescheduled]) -> None:
    """The new start of each booking, in one statement for the set."""
    await units[0].deps.repository.reschedule_many(units[0].conn, [(e.booking_id, e.starts_at) for e in events])


reschedule_booking = SetBased(reschedule_bookings)


async def remember_requests(units: Sequence[Unit[HandlerDeps]], events: Sequence[BookingCancellationRequested]) -> None:
    """Only who asked and how (a rejection is told to the patient when the patient asked), in
    one statement for the set."""
    await units[0].deps.repository.remember_requests(
        units[0].conn,
        [
            {
                "request_id": e.request_id,
                "booking_id": e.booking_id,
                "actor_kind": e.actor.kind,
                "channel": e.channel,
                "requested_at": e.requested_at,
            }
            for e in events
        ],
    )


remember_request = SetBased(remember_requests)


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


def cancellation_notice(unit: Unit[HandlerDeps], event: BookingCancelled, contacts: Directory) -> Notice:
    """Who hears of one cancellation, and what they read."""
    practice = contacts.practice(event.practice_id)
    patient = _patient(contacts.patient_row(event.booking_id))
    suspension = domain.caused_by_suspension(event.actor.kind, event.reason_code)
    return notice(
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


async def cancellation_contacts(units: Sequence[Unit[HandlerDeps]], events: Sequence[BookingCancelled]) -> Directory:
    """The patients and practices of a set of cancellations: one query each."""
    return await directory(
        units[0], booking_ids=[e.booking_id for e in events], practice_ids=[e.practice_id for e in events]
    )


async def notify_cancellations(units: Sequence[Unit[HandlerDeps]], events: Sequence[BookingCancelled]) -> None:
    """Who hears of each cancellation of a set: contacts read in one query per kind, every
    message recorded in one statement. (The service runs notices.notify_cancellation, which adds
    the professional's turn-away pay.)"""
    contacts = await cancellation_contacts(units, events)
    await record(units[0], [cancellation_notice(u, e, contacts) for u, e in zip(units, events, strict=True)])


notify_cancellation = SetBased(notify_cancellations)


async def notify_rejection(unit: Unit[HandlerDeps], event: BookingCancellationRejected) -> None:
    repository = unit.deps.repository
    patient_row = await _patient_row(unit, event.booking_id)
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
    slot = await _patient_row(unit, offer["booking_id"])  # the slot's time
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


async def note_no_shows(units: Sequence[Unit[HandlerDeps]], events: Sequence[BookingNoShowRecorded]) -> None:
    """Patients' no-shows with a fee: whether each goes on the card; told once the fee is
    settled. One statement merges the set's fees."""
    charged = [
        (u, e) for u, e in zip(units, events, strict=True) if e.party == "patient" and e.decision.fee is not None
    ]
    if not charged:
        return  # nothing is charged to a patient: nothing to tell
    fees = await units[0].deps.repository.merge_no_shows(
        units[0].conn,
        [
            {
                "booking_id": e.booking_id,
                "practice_id": e.practice_id,
                "starts_at": e.starts_at,
                "charge_card": e.decision.charge_card,
            }
            for _, e in charged
        ],
    )
    await _tell_fees(units[0], no_show=[(u, fees[e.booking_id]) for u, e in charged])


note_no_show = SetBased(note_no_shows)


async def note_charges(units: Sequence[Unit[HandlerDeps]], events: Sequence[ChargeCreated]) -> None:
    """Charges billing raised: a no-show charge completes its booking's fee; a late-cancellation
    fee is told with the cancellation, unless it was in staff review then (the cancellation
    quoted no fee): such a fee is told once, by email, when billing announces it final
    (`charge.created` again with status `due`, at the approved or edited amount). A fee waived
    in review is never announced due, so never told. At most one statement of each kind per set."""
    conn, repository = units[0].conn, units[0].deps.repository
    in_review: list[tuple[Unit[HandlerDeps], ChargeCreated]] = []
    final_late: list[tuple[Unit[HandlerDeps], ChargeCreated]] = []
    no_show: list[tuple[Unit[HandlerDeps], ChargeCreated]] = []
    for unit, event in zip(units, events, strict=True):
        if event.kind == "late_cancellation":
            (in_review if event.status == "pending_review" else final_late).append((unit, event))
        elif event.status != "pending_review":
            no_show.append((unit, event))
        # a no-show charge in review is not final: told once billing announces it due (approved
        # or edited), never if waived
    await repository.remember_fees_in_review(
        conn,
        [
            {
                "charge_id": e.charge_id,
                "booking_id": e.booking_id,
                "review_until": e.review_until,
                "announced_at": u.event.envelope.time,
            }
            for u, e in in_review
        ],
    )
    marked = await repository.mark_fees_final(conn, [(e.charge_id, u.event.envelope.time) for u, e in final_late])
    fees = await repository.merge_no_show_charges(
        conn,
        [
            {
                "booking_id": e.booking_id,
                "charge_id": e.charge_id,
                "amount": e.amount,
                "currency": e.currency,
                "code": e.code,
                "code_system": e.code_system,
            }
            for _, e in no_show
        ],
    )
    completed: list[tuple[Unit[HandlerDeps], Any]] = []
    for unit, event in no_show:
        fee = fees.get(event.booking_id)
        if fee is None:
            log.warning("a second no-show charge for one booking; the first one is told", charge_id=event.charge_id)
            continue
        completed.append((unit, fee))
    # a late fee never in review is absent from `marked`: the cancellation told it
    await _tell_fees(units[0], late=[(u, e) for u, e in final_late if e.charge_id in marked], no_show=completed)


note_charge = SetBased(note_charges)


async def note_payments(units: Sequence[Unit[HandlerDeps]], events: Sequence[PaymentCaptured | PaymentFailed]) -> None:
    """The card's answers: each completes its no-show fee (a payment for any other charge is
    not ours to tell). One statement merges the set's answers."""
    fees = await units[0].deps.repository.merge_no_show_payments(
        units[0].conn,
        [(e.booking_id, e.charge_id, "captured" if isinstance(e, PaymentCaptured) else "failed") for e in events],
    )
    await _tell_fees(
        units[0], no_show=[(u, fees[e.booking_id]) for u, e in zip(units, events, strict=True) if e.booking_id in fees]
    )


note_payment = SetBased(note_payments)


async def _tell_fees(
    unit: Unit[HandlerDeps],
    *,
    late: Sequence[tuple[Unit[HandlerDeps], ChargeCreated]] = (),
    no_show: Sequence[tuple[Unit[HandlerDeps], Any]] = (),
) -> None:
    """Tell the patients of late-cancellation fees now final and of no-show fees now settled
    (`no_show`: each unit with its fee's row as known now; one not settled yet waits): their
    contacts read in one query per kind, the messages recorded in one statement."""
    settled = [
        (u, fee, settlement)
        for u, fee in no_show
        if (
            settlement := domain.no_show_fee_settlement(
                domain.NoShowFee(charge_id=fee["charge_id"], charge_card=fee["charge_card"], payment=fee["payment"])
            )
        )
        is not None
    ]
    contacts = await directory(
        unit,
        booking_ids=[e.booking_id for _, e in late] + [fee["booking_id"] for _, fee, _ in settled],
        practice_ids=[fee["practice_id"] for _, fee, _ in settled],
    )
    notices = [_late_fee_notice(u, e, contacts) for u, e in late]
    notices += [_no_show_fee_notice(u, fee, settlement, contacts) for u, fee, settlement in settled]
    await record(unit, notices)


def _late_fee_notice(unit: Unit[HandlerDeps], event: ChargeCreated, contacts: Directory) -> Notice:
    patient_row = contacts.patient_row(event.booking_id)
    practice = contacts.practice(patient_row["practice_id"] if patient_row else "")
    patient = _patient(patient_row)
    return notice(
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


def _no_show_fee_notice(
    unit: Unit[HandlerDeps], fee: Any, settlement: domain.Settlement, contacts: Directory
) -> Notice:
    patient_row = contacts.patient_row(fee["booking_id"])
    practice = contacts.practice(fee["practice_id"] or (patient_row["practice_id"] if patient_row else ""))
    patient = _patient(patient_row)
    return notice(
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
    patient_row = await _patient_row(unit, event.booking_id)
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
    professional = await _professional_row(unit, event.professional_id)
    booking = await _patient_row(unit, event.booking_id)
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
    professional = await _professional_row(unit, event.professional_id)
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
    patient_row = await _patient_row(unit, event.booking_id)
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


def _patient(row: asyncpg.Record | None) -> domain.PatientContact | None:
    if row is None:
        return None
    return domain.PatientContact(
        first_name=row["first_name"], email=row["email"], phone=row["phone"], locale=row["locale"]
    )


def _practice_contact(practice_id: str, row: asyncpg.Record | None) -> domain.PracticeContact:
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


# --- the contacts of a set -----------------------------------------------------------------------


@dataclass(frozen=True)
class Directory:
    """The contacts a set of records needs, each kind read in one query (`directory`): the
    patients of its bookings, and the practices it names and those of these patients."""

    patients: Mapping[str, Any]
    practices: Mapping[str, Any]

    def patient_row(self, booking_id: str | None) -> Any | None:
        return self.patients.get(booking_id) if booking_id else None

    def practice(self, practice_id: str | None) -> domain.PracticeContact:
        """The practice's contacts; an unknown (or unnamed) one has none: UTC, English, no opt-ins."""
        return _practice_contact(practice_id or "", self.practices.get(practice_id) if practice_id else None)


async def directory(
    unit: Unit[HandlerDeps], *, booking_ids: Iterable[str | None] = (), practice_ids: Iterable[str | None] = ()
) -> Directory:
    """Read the patients of `booking_ids`, then the practices of `practice_ids` and of those
    patients: at most two queries, whatever the number of ids (none for no ids)."""
    repository = unit.deps.repository
    bookings = sorted({b for b in booking_ids if b})
    patients = await repository.get_patients(unit.conn, bookings) if bookings else {}
    wanted = sorted({p for p in practice_ids if p} | {row["practice_id"] for row in patients.values()})
    practices = await repository.get_practices(unit.conn, wanted) if wanted else {}
    return Directory(patients=patients, practices=practices)


async def _practice(unit: Unit[HandlerDeps], practice_id: str) -> domain.PracticeContact:
    return (await directory(unit, practice_ids=[practice_id])).practice(practice_id)


async def _patient_row(unit: Unit[HandlerDeps], booking_id: str) -> asyncpg.Record | None:
    patients: Mapping[str, asyncpg.Record] = await unit.deps.repository.get_patients(unit.conn, [booking_id])
    return patients.get(booking_id)


async def _professional_row(unit: Unit[HandlerDeps], professional_id: str) -> asyncpg.Record | None:
    found: Mapping[str, asyncpg.Record] = await unit.deps.repository.get_professionals(unit.conn, [professional_id])
    return found.get(professional_id)


# --- recording what to tell ----------------------------------------------------------------------


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


@dataclass(frozen=True)
class Notice:
    """One fact to tell: the messages planned for it, what they answer, and what their texts say."""

    messages: list[domain.Message]
    cause: Cause
    practice: domain.PracticeContact
    patient: domain.PatientContact | None
    starts_at: datetime | None
    fee: tuple[Decimal, str] | None
    facts: dict[str, Any]


def notice(
    unit: Unit[HandlerDeps],
    messages: list[domain.Message],
    *,
    practice: domain.PracticeContact,
    patient: domain.PatientContact | None,
    starts_at: datetime | None,
    fee: tuple[Decimal, str] | None = None,
    cause: Cause | None = None,
    **facts: Any,
) -> Notice:
    """The notice of `messages`, caused by the unit's event unless `cause` says otherwise."""
    return Notice(messages, cause or Cause.of(unit), practice, patient, starts_at, fee, facts)


async def record(unit: Unit[HandlerDeps], notices: Iterable[Notice]) -> None:
    """One delivery row per planned message, pending with its rendered text or skipped, for
    every notice at once: one statement (none when there is nothing to record). `unit` gives
    the connection and deps; each notice carries its own cause."""
    rows = [row for n in notices for row in _rows(unit.deps, n)]
    if rows:
        await unit.deps.repository.record_deliveries(unit.conn, rows)


async def _record(unit: Unit[HandlerDeps], messages: list[domain.Message], **kwargs: Any) -> None:
    """`record` of one notice: the handlers that run one record at a time."""
    await record(unit, [notice(unit, messages, **kwargs)])


def _rows(deps: HandlerDeps, n: Notice) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for message in n.messages:
        row: dict[str, Any] = {
            "notification_id": domain.notification_id(n.cause.key, message.recipient, message.channel),
            "event_id": n.cause.event_id,
            "event_type": n.cause.event_type,
            "correlation_id": n.cause.correlation_id,
            "booking_id": n.facts.get("booking_id"),
            "professional_id": n.facts.get("professional_id"),
            "practice_id": n.practice.practice_id or None,
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
                message, starts_at=n.starts_at, practice=n.practice, patient=n.patient, fee=n.fee, **n.facts
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
        rows.append(row)
    return rows

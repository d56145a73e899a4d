"""Second release (issue 17): the practice told of a patient's standing moving and of a
suspected no-show; the professional told of turn-away pay owed and of a reinstatement.

Guarantees, as for every notice (handlers.py): each fact is told once per recipient and
channel, however often its event arrives, because the notification id derives from the fact
(`Cause.key`), never from the envelope; a recipient with no address is recorded skipped with
the reason. Texts are in the practice's (or the professional's) language, en or de, times in
the practice's timezone.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from shared.consumer import SetBased, Unit
from shared.contracts.booking import BookingCancelled, BookingNoShowSuspected
from shared.contracts.scoring import AccountReinstated, PatientStandingChanged

from . import domain, handlers
from .handlers import Cause, HandlerDeps


async def notify_standing_change(unit: Unit[HandlerDeps], event: PatientStandingChanged) -> None:
    """The practice: which patient moved, from what to what, and why."""
    practice = await handlers._practice(unit, event.practice_id)
    await handlers._record(
        unit,
        domain.plan_practice_notice(domain.STANDING_TEMPLATE, practice),
        # A patient may move to the same standing again later: the move's own time tells them apart.
        cause=Cause.of(
            unit,
            key=f"patient.standing_changed/{event.practice_id}/{event.patient_id}/{unit.event.envelope.time.isoformat()}",
        ),
        practice=practice,
        patient=None,
        starts_at=None,
        patient_id=event.patient_id,
        standing=event.standing,
        previous_standing=event.previous,
        standing_count=event.count,
        window_days=event.window_days,
    )


async def notify_suspected_no_show(unit: Unit[HandlerDeps], event: BookingNoShowSuspected) -> None:
    """The practice: nothing happened to this booking by start + grace; confirm or record it."""
    practice = await handlers._practice(unit, event.practice_id)
    patient = handlers._patient(await handlers._patient_row(unit, event.booking_id))
    await handlers._record(
        unit,
        domain.plan_practice_notice(domain.NO_SHOW_SUSPECTED_TEMPLATE, practice),
        cause=Cause.of(unit, key=f"booking.no_show_suspected/{event.booking_id}"),
        practice=practice,
        patient=patient,
        starts_at=event.starts_at,
        booking_id=event.booking_id,
        grace_minutes=event.grace_minutes,
    )


async def notify_cancellations(units: Sequence[Unit[HandlerDeps]], events: Sequence[BookingCancelled]) -> None:
    """Who hears of each cancellation of a set (handlers.cancellation_notice), then the booked
    professional of the turn-away pay the office owes them when staff cancelled inside the
    office's window. Contacts are read in one query per kind, every message recorded in one
    statement, whatever the size of the set."""
    contacts = await handlers.cancellation_contacts(units, events)
    told = [handlers.cancellation_notice(u, e, contacts) for u, e in zip(units, events, strict=True)]
    owed = [
        (u, e, e.professional_id, e.decision.turnaway_pay)
        for u, e in zip(units, events, strict=True)
        if e.decision.turnaway_pay is not None and e.professional_id is not None and e.actor.kind == "staff"
    ]
    if owed:
        professionals = await units[0].deps.repository.get_professionals(
            units[0].conn, sorted({professional_id for _, _, professional_id, _ in owed})
        )
        told += [
            _turnaway_notice(u, e, (pay.amount, pay.currency), professionals.get(professional_id), contacts)
            for u, e, professional_id, pay in owed
        ]
    await handlers.record(units[0], told)


notify_cancellation = SetBased(notify_cancellations)


def _turnaway_notice(
    unit: Unit[HandlerDeps],
    event: BookingCancelled,
    pay: tuple[Decimal, str],
    professional: Any,
    contacts: handlers.Directory,
) -> handlers.Notice:
    practice = contacts.practice(event.practice_id)
    return handlers.notice(
        unit,
        domain.plan_professional_notice(domain.TURNAWAY_TEMPLATE, handlers._professional(professional), practice),
        cause=Cause.of(unit, key=f"turnaway_pay/{event.booking_id}"),
        practice=practice,
        patient=None,
        starts_at=event.starts_at,
        fee=pay,
        booking_id=event.booking_id,
        professional_id=event.professional_id,
        professional_first_name=professional["first_name"] if professional else None,
    )


async def notify_reinstatement(unit: Unit[HandlerDeps], event: AccountReinstated) -> None:
    """The professional, by email: the suspension has ended."""
    professional = await handlers._professional_row(unit, event.professional_id)
    practice = await handlers._practice_of(unit, None, professional)
    await handlers._record(
        unit,
        domain.plan_professional_notice(domain.REINSTATEMENT_TEMPLATE, handlers._professional(professional), practice),
        cause=Cause.of(unit, key=f"account.reinstated/{event.professional_id}/{event.reinstated_at.isoformat()}"),
        practice=practice,
        patient=None,
        starts_at=None,
        professional_id=event.professional_id,
        professional_first_name=professional["first_name"] if professional else None,
        reinstated=event.reinstated_at,
    )

"""Second release (issue 17): arrivals, the no-show sweep, waitlist offers accepted, and
suspensions ended by a reinstatement.

Guarantees:
- `booking.arrived` records the first arrival of a scheduled booking; the sweep never reports
  a booking that arrived.
- The sweep (`sweep_unattended`, shared.background `DueWork`) reports a booking with no
  arrival, completion, cancellation or no-show by its start + the practice's
  `no_show_sweep.grace_minutes` as `booking.no_show_suspected`, once: the claim takes the due
  bookings `FOR UPDATE SKIP LOCKED` and marks them reported in the same transaction as the
  event's outbox row, so with any number of replicas each is reported by one of them. The event
  carries the time the booking became due, not the time the sweep ran. Nothing is charged: staff
  confirm with `booking.no_show_reported`.
- `waitlist.offer_accepted` for the live offer (open and accepted by its expiry, or taken by
  the patient's new booking already) fills the slot once: `booking.slot_filled`; the offer is
  closed, so it neither expires into a further offer nor releases the slot. Anything else is
  audited as refused (the contract has no rejection event for it).
- `account.reinstated` ends booking's record of the suspension: bookings that arrive later for
  that professional are no longer cancelled.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.background import DueWork, WorkUnit
from shared.consumer import Unit
from shared.contracts.booking import BookingNoShowSuspected, BookingSlotFilled
from shared.contracts.scoring import AccountReinstated
from shared.contracts.upstream import BookingArrived, PracticeConfigured, WaitlistOfferAccepted
from shared.logging import get_logger
from shared.topics import BOOKING_EVENTS

from . import domain, handlers
from . import repository as sql_repository
from .handlers import BookingDeps
from .settings import BookingSettings

log = get_logger(__name__)


async def configure_practice(unit: Unit[BookingDeps], event: PracticeConfigured) -> None:
    """The waitlist settings (handlers.configure_practice), then the no-show sweep's."""
    await handlers.configure_practice(unit, event)
    await unit.deps.repository.set_no_show_sweep(
        unit.conn,
        event.practice_id,
        enabled=event.no_show_sweep.enabled,
        grace_minutes=event.no_show_sweep.grace_minutes,
        at=unit.event.envelope.time,
    )


async def record_arrival(unit: Unit[BookingDeps], event: BookingArrived) -> None:
    repository = unit.deps.repository
    booking = await repository.lock_booking(unit.conn, event.booking_id)
    if booking is None:
        raise LookupError(f"booking {event.booking_id} is unknown; its arrival cannot be recorded")
    if booking["status"] != "scheduled":
        await repository.audit(
            unit.conn,
            event.booking_id,
            at=event.arrived_at,
            action="arrival_ignored",
            detail={"status": booking["status"]},
        )
        return
    if await repository.mark_arrived(unit.conn, event.booking_id, event.arrived_at):
        await repository.audit(unit.conn, event.booking_id, at=event.arrived_at, action="arrived")


async def fill_slot(unit: Unit[BookingDeps], event: WaitlistOfferAccepted) -> None:
    """The live offer of a cancelled booking's slot was accepted: the slot is filled, once."""
    repository = unit.deps.repository
    booking_id = unit.event.envelope.subject  # keyed by the offered booking's id
    # Lock order as everywhere: the booking, then its offers.
    await repository.lock_booking(unit.conn, booking_id)
    offer = await repository.lock_offer(unit.conn, event.offer_id)
    answer = domain.offer_acceptance(
        offer_status=offer["status"] if offer else None,
        offer_booking_id=offer["booking_id"] if offer else None,
        offer_waitlist_id=offer["waitlist_id"] if offer else None,
        expires_at=offer["expires_at"] if offer else None,
        filled=bool(offer and offer["filled_at"] is not None),
        booking_id=booking_id,
        waitlist_id=event.waitlist_id,
        accepted_at=event.accepted_at,
    )
    detail = {"offer_id": event.offer_id, "waitlist_id": event.waitlist_id, "new_booking_id": event.new_booking_id}
    if answer == "filled_already":
        return  # the same acceptance again: filled once
    if answer != "fill":
        log.warning("offer acceptance refused", booking_id=booking_id, offer_id=event.offer_id, reason=answer)
        if offer is not None:  # audited on the offered booking (an unknown offer names no booking we know)
            await repository.audit(
                unit.conn,
                offer["booking_id"],
                at=event.accepted_at,
                action="offer_acceptance_refused",
                detail={**detail, "reason": answer},
            )
        return
    await repository.fill_offer(unit.conn, event.offer_id, new_booking_id=event.new_booking_id, at=event.accepted_at)
    await repository.audit(unit.conn, booking_id, at=event.accepted_at, action="slot_filled", detail=detail)
    unit.emit(
        BOOKING_EVENTS,
        BookingSlotFilled.new(
            offer_id=event.offer_id,
            booking_id=booking_id,
            new_booking_id=event.new_booking_id,
            waitlist_id=event.waitlist_id,
        ),
        subject=booking_id,
        time=event.accepted_at,
    )


async def end_suspension(unit: Unit[BookingDeps], event: AccountReinstated) -> None:
    """Bookings for a reinstated professional are no longer cancelled as they arrive."""
    await unit.deps.repository.end_suspension(unit.conn, event.professional_id, event.reinstated_at)


# --- the no-show sweep --------------------------------------------------------------------------


def no_show_sweep(settings: BookingSettings) -> DueWork[asyncpg.Record, BookingDeps]:
    """Background job: report the bookings nothing happened to by start + grace, every
    NO_SHOW_SWEEP_INTERVAL_SECONDS; the claim marks them reported."""
    return DueWork(
        name="sweep_no_shows",
        claim=sql_repository.claim_unattended,
        act=report_suspected_no_show,
        key=lambda row: row["booking_id"],
        correlation=lambda row: row["booking_id"],
        interval_seconds=settings.no_show_sweep_interval_seconds,
        batch_size=settings.no_show_sweep_batch_size,
    )


async def report_suspected_no_show(unit: WorkUnit[Any], row: asyncpg.Record) -> None:
    due_at = domain.sweep_due_at(row["starts_at"], row["grace_minutes"])
    await unit.deps.repository.audit(
        unit.conn,
        row["booking_id"],
        at=due_at,
        action="no_show_suspected",
        detail={"grace_minutes": row["grace_minutes"]},
    )
    unit.emit(
        BOOKING_EVENTS,
        BookingNoShowSuspected.new(
            booking_id=row["booking_id"],
            practice_id=row["practice_id"],
            starts_at=row["starts_at"],
            grace_minutes=row["grace_minutes"],
        ),
        subject=row["booking_id"],
        time=due_at,
    )

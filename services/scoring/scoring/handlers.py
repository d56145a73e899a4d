"""One async function per message type: load, decide, save, emit.

Every write locks the professional's row first, so one professional's ledger, holds and
suspension change in one order whatever partition (booking) the causing events came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.consumer import Unit
from shared.contracts.booking import BookingCancelled, BookingCompleted, BookingNoShowRecorded
from shared.contracts.scoring import AccountSuspended, HoldPlaced, ScoreChanged
from shared.logging import get_logger
from shared.topics import SCORING_EVENTS

from . import domain, repository

log = get_logger(__name__)


@dataclass(frozen=True)
class ScoringRules:
    """The platform's suspension settings, handed to the handlers as the unit's deps."""

    suspension_holds: int = domain.SUSPENSION_HOLDS
    suspension_window: timedelta = domain.SUSPENSION_WINDOW


async def score_cancellation(unit: Unit, event: BookingCancelled) -> None:
    """A professional's own cancellation costs score (and a hold when late); cancellations by
    the patient, the practice or the system never touch the professional's score."""
    if event.actor.kind != "professional":
        return
    # The policy only lets the booked professional cancel, so the actor is that professional.
    professional_id = event.professional_id or event.actor.id
    penalty = domain.penalty(event.classification, event.decision.score_delta, event.decision.hold_days)
    await _penalise(unit, professional_id, event.booking_id, penalty, at=event.cancelled_at)


async def score_no_show(unit: Unit, event: BookingNoShowRecorded) -> None:
    """A professional who did not attend: the no-show penalty and hold."""
    if event.party != "professional":
        return
    if event.professional_id is None:
        # Never retried into success: the event names nobody to penalise. Dead-lettered for ops.
        raise ValueError(f"professional no-show on booking {event.booking_id} names no professional_id")
    penalty = domain.penalty("no_show", event.decision.score_delta, event.decision.hold_days)
    await _penalise(unit, event.professional_id, event.booking_id, penalty, at=event.recorded_at)


async def score_completion(unit: Unit, event: BookingCompleted) -> None:
    """A completed booking with a professional earns the completion bonus."""
    if event.professional_id is None:
        return
    await repository.lock_professional(unit.conn, event.professional_id)
    await _add_to_ledger(
        unit, event.professional_id, event.booking_id, domain.COMPLETION_DELTA, "completed", at=event.completed_at
    )


async def _add_to_ledger(
    unit: Unit, professional_id: str, booking_id: str, delta: int, cause: str, *, at: datetime
) -> bool:
    """Append the entry and announce the new score; False when this booking already counted."""
    added = await repository.add_ledger_entry(
        unit.conn,
        entry_id=domain.ledger_entry_id(professional_id, booking_id, cause),
        professional_id=professional_id,
        booking_id=booking_id,
        delta=delta,
        cause=cause,
        occurred_at=at,
        event_id=unit.event.id,
    )
    if not added:
        # Redelivered under another envelope id (a replay): its effect exists already.
        log.info("score entry exists; nothing to do", professional_id=professional_id, booking_id=booking_id, cause=cause)
        return False
    new_score = domain.score(await repository.ledger_deltas(unit.conn, professional_id))
    unit.emit(
        SCORING_EVENTS,
        ScoreChanged.new(professional_id=professional_id, booking_id=booking_id, delta=delta, score=new_score, cause=cause),
        subject=professional_id,
    )
    return True


async def _penalise(unit: Unit, professional_id: str, booking_id: str, penalty: domain.Penalty, *, at: datetime) -> None:
    professional = await repository.lock_professional(unit.conn, professional_id)
    if not await _add_to_ledger(unit, professional_id, booking_id, penalty.delta, penalty.cause, at=at):
        return
    if penalty.hold_days is None or penalty.hold_cause is None:
        return

    holds = await repository.holds_of(unit.conn, professional_id)
    starts_at, ends_at = domain.next_hold_window(holds, at, penalty.hold_days)
    hold_id = domain.hold_id(professional_id, booking_id)
    await repository.add_hold(
        unit.conn,
        hold_id=hold_id,
        professional_id=professional_id,
        booking_id=booking_id,
        cause=penalty.hold_cause,
        occurred_at=at,
        starts_at=starts_at,
        ends_at=ends_at,
    )
    unit.emit(
        SCORING_EVENTS,
        HoldPlaced.new(
            hold_id=hold_id,
            professional_id=professional_id,
            booking_id=booking_id,
            cause=penalty.hold_cause,
            starts_at=starts_at,
            ends_at=ends_at,
        ),
        subject=professional_id,
    )

    if professional["suspended_at"] is not None:
        return  # suspended once; later holds are recorded but suspend nothing new
    rules: ScoringRules = unit.deps
    placed = domain.Hold(hold_id=hold_id, status="running", occurred_at=at, starts_at=starts_at, ends_at=ends_at)
    suspending = domain.suspension_holds(
        [*holds, placed], threshold=rules.suspension_holds, window=rules.suspension_window
    )
    if suspending is None:
        return
    if await repository.suspend(unit.conn, professional_id, at=at, hold_ids=suspending):
        unit.emit(
            SCORING_EVENTS,
            AccountSuspended.new(professional_id=professional_id, holds=suspending, suspended_at=at),
            subject=professional_id,
        )

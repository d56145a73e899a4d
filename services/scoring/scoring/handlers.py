"""One async function per message type: load, decide, save, emit.

Every write locks the professional's row first, so one professional's ledger, holds, excuses
and suspension change in one order whatever partition (booking) the causing events came from;
the hold-expiry and nightly jobs (scheduler.py) lock the same row. Handlers reach the database
only through their ports (`ScoringDeps`, the unit's deps), so tests/handlers runs them against
fakes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared.consumer import Unit
from shared.contracts.booking import BookingCancelled, BookingCompleted, BookingNoShowRecorded
from shared.contracts.scoring import AccountSuspended, HoldLifted, HoldPlaced, ScoreChanged
from shared.contracts.upstream import ExcuseReviewed, ExcuseSubmitted, ScoreRecalculationRequested
from shared.logging import get_logger
from shared.topics import SCORING_EVENTS

from . import domain
from . import repository as sql_repository

log = get_logger(__name__)


@dataclass(frozen=True)
class ScoringDeps:
    """The handlers' ports and the platform's suspension settings, built by `app.definition`'s
    `make_deps`. No clock: handlers decide by the event's own time, so a replay decides the same."""

    # repository.py, or anything with the same functions (tests/handlers: an in-memory fake).
    repository: Any
    suspension_holds: int = domain.SUSPENSION_HOLDS
    suspension_window: timedelta = domain.SUSPENSION_WINDOW


async def score_cancellation(unit: Unit[ScoringDeps], event: BookingCancelled) -> None:
    """A professional's own cancellation costs what the policy decided (score, and a hold when
    it decided one); cancellations by the patient, the practice or the system never touch the
    professional's score. A decision without its `score_delta` is refused
    (`domain.DecisionWithoutPenalty`), so the record is dead-lettered, never scored by a guess."""
    if event.actor.kind != "professional":
        return
    # The policy only lets the booked professional cancel, so the actor is that professional.
    professional_id = event.professional_id or event.actor.id
    penalty = domain.penalty(event.classification, event.decision.score_delta, event.decision.hold_days)
    await _penalise(unit, professional_id, event.booking_id, penalty, at=event.cancelled_at)


async def score_no_show(unit: Unit[ScoringDeps], event: BookingNoShowRecorded) -> None:
    """A professional who did not attend: the penalty and hold the policy decided (refused, so
    dead-lettered, when the decision carries none)."""
    if event.party != "professional":
        return
    if event.professional_id is None:
        # Never retried into success: the event names nobody to penalise. Dead-lettered for ops.
        raise ValueError(f"professional no-show on booking {event.booking_id} names no professional_id")
    penalty = domain.penalty("no_show", event.decision.score_delta, event.decision.hold_days)
    await _penalise(unit, event.professional_id, event.booking_id, penalty, at=event.recorded_at)


async def score_completion(unit: Unit[ScoringDeps], event: BookingCompleted) -> None:
    """A completed booking with a professional earns the completion bonus."""
    if event.professional_id is None:
        return
    await unit.deps.repository.lock_professional(unit.conn, event.professional_id)
    await _add_to_ledger(
        unit, event.professional_id, event.booking_id, domain.COMPLETION_DELTA, "completed", at=event.completed_at
    )


async def _add_to_ledger(
    unit: Unit[ScoringDeps], professional_id: str, booking_id: str, delta: int, cause: str, *, at: datetime
) -> bool:
    """Append the entry and announce the new score; False when this booking already counted."""
    repository = unit.deps.repository
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
        log.info(
            "score entry exists; nothing to do", professional_id=professional_id, booking_id=booking_id, cause=cause
        )
        return False
    new_score = domain.score(await repository.ledger_deltas(unit.conn, professional_id))
    unit.emit(
        SCORING_EVENTS,
        ScoreChanged.new(
            professional_id=professional_id, booking_id=booking_id, delta=delta, score=new_score, cause=cause
        ),
        subject=professional_id,
    )
    return True


async def _penalise(
    unit: Unit[ScoringDeps], professional_id: str, booking_id: str, penalty: domain.Penalty, *, at: datetime
) -> None:
    repository = unit.deps.repository
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
    rules = unit.deps
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


async def record_excuse(unit: Unit[ScoringDeps], event: ExcuseSubmitted) -> None:
    """A submitted excuse waits for its review, or is refused at once (recorded as rejected
    with the reason) when no penalty is recorded for that professional and booking."""
    repository = unit.deps.repository
    professional = await repository.find_professional_for_update(unit.conn, event.professional_id)
    penalised = professional is not None and await repository.has_penalty(
        unit.conn, event.professional_id, event.booking_id
    )
    refusal = domain.assess_submission(
        event.professional_id, event.booking_id, professional_known=professional is not None, penalised=penalised
    )
    added = await repository.add_excuse(
        unit.conn,
        excuse_id=event.excuse_id,
        professional_id=event.professional_id,
        booking_id=event.booking_id,
        document_ref=event.document_ref,
        submitted_at=event.submitted_at,
        status="rejected" if refusal else "pending",
        reason=refusal.reason if refusal else None,
        message=refusal.message if refusal else None,
        event_id=unit.event.id,
    )
    if added:
        log.info(
            "excuse recorded",
            excuse_id=event.excuse_id,
            professional_id=event.professional_id,
            booking_id=event.booking_id,
            refused=refusal.reason if refusal else None,
        )
        return
    # Known already: the same submission again, or its review came first (and was refused as
    # unknown). The first decision stands; only the missing details are filled in.
    completed = await repository.complete_excuse(
        unit.conn,
        excuse_id=event.excuse_id,
        booking_id=event.booking_id,
        document_ref=event.document_ref,
        submitted_at=event.submitted_at,
        event_id=unit.event.id,
    )
    log.info("excuse known already; its decision stands", excuse_id=event.excuse_id, details_filled=completed)


async def review_excuse(unit: Unit[ScoringDeps], event: ExcuseReviewed) -> None:
    """Approval lifts the booking's hold at once (`hold.lifted`, cause excused) and lets the next
    recalculation take its penalty out; rejection changes nothing. A review of an excuse never
    submitted is recorded as rejected with the reason."""
    repository = unit.deps.repository
    known = await repository.get_excuse(unit.conn, event.excuse_id)
    if known is not None and known["professional_id"] is not None:
        # Lock order as everywhere: the professional first, then what belongs to them.
        await repository.find_professional_for_update(unit.conn, known["professional_id"])
    excuse = await repository.get_excuse(unit.conn, event.excuse_id, for_update=True)
    outcome = domain.review_outcome(excuse["status"] if excuse else None, event.decision)
    review = {
        "decision": event.decision,
        "reviewer_id": event.reviewer_id,
        "reviewed_at": event.reviewed_at,
        "event_id": unit.event.id,
    }

    if outcome == "unknown" or excuse is None:
        refusal = domain.unknown_excuse(event.excuse_id)
        await repository.add_unknown_excuse_review(
            unit.conn,
            excuse_id=event.excuse_id,
            # The topic is keyed by professional_id, so the subject names whose excuse it was.
            professional_id=unit.event.envelope.subject,
            reason=refusal.reason,
            message=refusal.message,
            **review,
        )
        log.warning("review of an unknown excuse recorded as rejected", excuse_id=event.excuse_id)
        return
    if outcome == "already_decided":
        noted = await repository.note_review(unit.conn, excuse_id=event.excuse_id, **review)
        log.info("excuse decided already; the review changes nothing", excuse_id=event.excuse_id, noted=noted)
        return
    if outcome == "reject":
        refusal = domain.reviewer_rejection(event.reviewer_id)
        await repository.review_excuse(
            unit.conn,
            excuse_id=event.excuse_id,
            status="rejected",
            reason=refusal.reason,
            message=refusal.message,
            **review,
        )
        return

    professional_id, booking_id = excuse["professional_id"], excuse["booking_id"]
    await repository.review_excuse(
        unit.conn, excuse_id=event.excuse_id, status="approved", reason=None, message=None, **review
    )
    excused = await repository.excuse_hold(
        unit.conn, professional_id, booking_id, excuse_id=event.excuse_id, at=event.reviewed_at
    )
    if excused is not None and excused[1]:
        unit.emit(
            SCORING_EVENTS,
            HoldLifted.new(hold_id=excused[0], professional_id=professional_id, cause="excused"),
            subject=professional_id,
            time=event.reviewed_at,
        )


async def recalculate_scores(unit: Unit[ScoringDeps], event: ScoreRecalculationRequested) -> None:
    """Recalculate one professional's score, or every professional's when none is named."""
    at = unit.event.envelope.time
    changes = await recalculate(
        unit.conn, event.professional_id, at=at, cause_id=unit.event.id, repository=unit.deps.repository
    )
    for changed in changes:
        unit.emit(SCORING_EVENTS, changed, subject=changed.professional_id, time=at)


async def recalculate(
    conn: asyncpg.Connection,
    professional_id: str | None,
    *,
    at: datetime,
    cause_id: str,
    repository: Any = sql_repository,  # the nightly run (scheduler.py) has no deps to pass yet
) -> list[ScoreChanged]:
    """Recompute scores from the ledger and the approved excuses (one professional, or all):
    add each missing compensating entry, and return one `score.changed` (cause recalculated) per
    entry added. Run again, it adds and returns nothing."""
    if professional_id is not None:
        professional_ids = [professional_id]
    else:
        professional_ids = await repository.professionals_to_recalculate(conn)
    changes: list[ScoreChanged] = []
    for pid in professional_ids:
        if await repository.find_professional_for_update(conn, pid) is None:
            continue  # never scored: nothing to recompute
        entries = await repository.ledger_entries(conn, pid)
        excused = await repository.approved_excuse_bookings(conn, pid)
        current = domain.score(e.delta for e in entries)
        for compensation in domain.compensations(entries, excused):
            added = await repository.add_ledger_entry(
                conn,
                entry_id=domain.ledger_entry_id(pid, compensation.booking_id, domain.EXCUSED_CAUSE),
                professional_id=pid,
                booking_id=compensation.booking_id,
                delta=compensation.delta,
                cause=domain.EXCUSED_CAUSE,
                occurred_at=at,
                event_id=cause_id,
            )
            if not added:
                continue
            current += compensation.delta
            changes.append(
                ScoreChanged.new(
                    professional_id=pid,
                    booking_id=compensation.booking_id,
                    delta=compensation.delta,
                    score=current,
                    cause="recalculated",
                )
            )
    if changes:
        log.info("scores recalculated", professionals=len({c.professional_id for c in changes}), entries=len(changes))
    return changes

"""One async function per message type: load, decide, save, emit.

Every write locks the professional's row first, so one professional's ledger, holds, excuses
and suspension change in one order whatever partition (booking) the causing events came from;
the hold-expiry and nightly jobs (scheduler.py) lock the same row. Handlers reach the database
only through their ports (`ScoringDeps`, the unit's deps), so tests/handlers runs them against
fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared.consumer import SetBased, Unit
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


@dataclass(frozen=True)
class Scoring:
    """One record's entry in a professional's ledger: a penalty (with its hold, when the policy
    decided one) or the completion bonus."""

    unit: Unit[ScoringDeps]
    professional_id: str
    booking_id: str
    delta: int
    cause: str
    at: datetime
    hold_days: int | None = None
    hold_cause: str | None = None

    @property
    def entry_id(self) -> str:
        return domain.ledger_entry_id(self.professional_id, self.booking_id, self.cause)


def cancellation_scoring(unit: Unit[ScoringDeps], event: BookingCancelled) -> Scoring | None:
    """A professional's own cancellation costs what the policy decided (score, and a hold when
    it decided one); cancellations by the patient, the practice or the system never touch the
    professional's score (None). A decision without its `score_delta` is refused
    (`domain.DecisionWithoutPenalty`), so the record is dead-lettered, never scored by a guess."""
    if event.actor.kind != "professional":
        return None
    # The policy only lets the booked professional cancel, so the actor is that professional.
    professional_id = event.professional_id or event.actor.id
    penalty = domain.penalty(event.classification, event.decision.score_delta, event.decision.hold_days)
    return _penalised(unit, professional_id, event.booking_id, penalty, at=event.cancelled_at)


def no_show_scoring(unit: Unit[ScoringDeps], event: BookingNoShowRecorded) -> Scoring | None:
    """A professional who did not attend: the penalty and hold the policy decided (refused, so
    dead-lettered, when the decision carries none). A patient's no-show is not theirs (None)."""
    if event.party != "professional":
        return None
    if event.professional_id is None:
        # Never retried into success: the event names nobody to penalise. Dead-lettered for ops.
        raise ValueError(f"professional no-show on booking {event.booking_id} names no professional_id")
    penalty = domain.penalty("no_show", event.decision.score_delta, event.decision.hold_days)
    return _penalised(unit, event.professional_id, event.booking_id, penalty, at=event.recorded_at)


def _penalised(
    unit: Unit[ScoringDeps], professional_id: str, booking_id: str, penalty: domain.Penalty, *, at: datetime
) -> Scoring:
    return Scoring(
        unit,
        professional_id,
        booking_id,
        penalty.delta,
        penalty.cause,
        at,
        hold_days=penalty.hold_days,
        hold_cause=penalty.hold_cause,
    )


async def score_completions(units: Sequence[Unit[ScoringDeps]], events: Sequence[BookingCompleted]) -> None:
    """Completed bookings with a professional earn the completion bonus, set-based (`score`)."""
    await score(
        [
            Scoring(
                unit, event.professional_id, event.booking_id, domain.COMPLETION_DELTA, "completed", event.completed_at
            )
            for unit, event in zip(units, events, strict=True)
            if event.professional_id is not None
        ]
    )


score_completion = SetBased(score_completions)


async def score(scorings: Sequence[Scoring]) -> None:
    """Score a set of records in their order, with a fixed number of statements whatever its
    size: the professionals locked in one, the entries appended in one (a booking counts once:
    an entry that exists is a replay and changes nothing), the totals read in one; and for the
    penalties with a hold, the holds read in one, placed in one, and the suspensions they cause
    made in one. Two records of one professional come out exactly as one after the other: the
    second announces the score with the first's delta in it, its hold stacks behind the
    first's, and a professional is suspended once."""
    if not scorings:
        return
    unit0 = scorings[0].unit
    conn, repository, deps = unit0.conn, unit0.deps.repository, unit0.deps
    professionals = await repository.lock_professionals(conn, [s.professional_id for s in scorings])
    fresh = set(
        await repository.add_ledger_entries(
            conn,
            [
                {
                    "entry_id": s.entry_id,
                    "professional_id": s.professional_id,
                    "booking_id": s.booking_id,
                    "delta": s.delta,
                    "cause": s.cause,
                    "occurred_at": s.at,
                    "event_id": s.unit.event.id,
                }
                for s in scorings
            ],
        )
    )
    added: list[Scoring] = []
    for s in scorings:
        if s.entry_id in fresh:
            fresh.discard(s.entry_id)  # the same entry twice in a set: the first added it
            added.append(s)
        else:
            # Redelivered under another envelope id (a replay): its effect exists already.
            log.debug("score entry exists; nothing to do", professional_id=s.professional_id, booking_id=s.booking_id)
    if not added:
        return

    # The ledger with this set's entries in it, less them: the score each record starts from.
    totals = await repository.ledger_totals(conn, sorted({s.professional_id for s in added}))
    for s in added:
        totals[s.professional_id] -= s.delta
    for s in added:
        totals[s.professional_id] += s.delta
        s.unit.emit(
            SCORING_EVENTS,
            ScoreChanged.new(
                professional_id=s.professional_id,
                booking_id=s.booking_id,
                delta=s.delta,
                score=domain.score([totals[s.professional_id]]),
                cause=s.cause,
            ),
            subject=s.professional_id,
        )

    held = [(s, s.hold_days, s.hold_cause) for s in added if s.hold_days is not None and s.hold_cause is not None]
    if not held:
        return
    holds = await repository.holds_by_professional(conn, sorted({s.professional_id for s, _, _ in held}))
    suspended = {p for p, row in professionals.items() if row["suspended_at"] is not None}
    placed: list[dict[str, Any]] = []
    suspending: list[tuple[Scoring, list[str]]] = []
    for s, hold_days, hold_cause in held:
        theirs = holds[s.professional_id]  # with the holds of this set's earlier records
        starts_at, ends_at = domain.next_hold_window(theirs, s.at, hold_days)
        hold_id = domain.hold_id(s.professional_id, s.booking_id)
        placed.append(
            {
                "hold_id": hold_id,
                "professional_id": s.professional_id,
                "booking_id": s.booking_id,
                "cause": hold_cause,
                "occurred_at": s.at,
                "starts_at": starts_at,
                "ends_at": ends_at,
            }
        )
        theirs.append(
            domain.Hold(hold_id=hold_id, status="running", occurred_at=s.at, starts_at=starts_at, ends_at=ends_at)
        )
        s.unit.emit(
            SCORING_EVENTS,
            HoldPlaced.new(
                hold_id=hold_id,
                professional_id=s.professional_id,
                booking_id=s.booking_id,
                cause=hold_cause,
                starts_at=starts_at,
                ends_at=ends_at,
            ),
            subject=s.professional_id,
        )
        if s.professional_id in suspended:
            continue  # suspended once; later holds are recorded but suspend nothing new
        hold_ids = domain.suspension_holds(theirs, threshold=deps.suspension_holds, window=deps.suspension_window)
        if hold_ids is not None:
            suspended.add(s.professional_id)
            suspending.append((s, hold_ids))
    await repository.add_holds(conn, placed)
    if not suspending:
        return
    now_suspended = await repository.suspend_professionals(
        conn, [(s.professional_id, s.at, hold_ids) for s, hold_ids in suspending]
    )
    for s, hold_ids in suspending:
        if s.professional_id in now_suspended:
            s.unit.emit(
                SCORING_EVENTS,
                AccountSuspended.new(professional_id=s.professional_id, holds=hold_ids, suspended_at=s.at),
                subject=s.professional_id,
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

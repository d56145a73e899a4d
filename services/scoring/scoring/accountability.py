"""Second release (issue 17): patient standing per practice, office scores, and reinstatement.

Guarantees:
- A patient's late cancellation (by the patient, or by staff for them) or no-show at a practice
  is one case, once per booking and kind (uuid5 of the booking), whatever the redeliveries; a
  case whose fee was waived, at the time or later (`charge.waived`), does not count.
- A patient's standing at a practice moves only when the practice has `standing.enabled`, and
  every move is one `patient.standing_changed` (keyed by patient_id) with the previous standing,
  the count and a reason. Moves down happen as cases are excused, or as they age out of the
  window: the `standing_review` job (shared.background) claims standings whose oldest counted
  case has aged out with `FOR UPDATE SKIP LOCKED`, so each is moved by one replica, at the time
  the case aged out (not the time the job ran).
- Staff cancelling a booked professional cost the office what the policy decided
  (`office_score_delta`, `office_cause`), once per booking: one `office.score_changed` (keyed by
  practice_id) with the office's new score (100 + its ledger, never stored).
- `professional.reinstated` ends a running suspension once: `account.reinstated`, the
  suspension's holds cleared (they no longer count towards the next one); reinstating a
  professional who is not suspended changes nothing.
Lock order (as `repository.py` says): professional, office, patient standing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from shared.background import DueWork, WorkUnit
from shared.consumer import Unit, UnitOfWork
from shared.contracts.billing import ChargeWaived
from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.scoring import AccountReinstated, OfficeScoreChanged, PatientStandingChanged
from shared.contracts.upstream import PracticeConfigured, ProfessionalReinstated
from shared.logging import get_logger
from shared.topics import SCORING_EVENTS

from . import domain, handlers, repository
from .handlers import ScoringDeps
from .settings import ScoringSettings

log = get_logger(__name__)


# --- booking.events.v1: one handler per type, the professional's scoring first -----------------


async def on_cancelled(unit: Unit[ScoringDeps], event: BookingCancelled) -> None:
    """The professional's score (handlers.score_cancellation), then the office's, then the patient's case."""
    await handlers.score_cancellation(unit, event)
    await charge_office(unit, event)
    kind = domain.counts_towards_standing(event.actor.kind, event.classification, event.decision.fee_waived)
    if kind is not None:
        await _add_case(unit, event.practice_id, event.patient_id, event.booking_id, kind, at=event.cancelled_at)


async def on_no_show(unit: Unit[ScoringDeps], event: BookingNoShowRecorded) -> None:
    await handlers.score_no_show(unit, event)
    if event.party == "patient" and not event.decision.fee_waived:
        await _add_case(unit, event.practice_id, event.patient_id, event.booking_id, "no_show", at=event.recorded_at)


async def charge_office(unit: Unit[ScoringDeps], event: BookingCancelled) -> None:
    """Staff cancelling a booked professional: the office's score moves by what the policy decided."""
    decision = event.decision
    if (
        event.actor.kind != "staff"
        or event.professional_id is None
        or decision.office_score_delta is None
        or decision.office_cause is None
    ):
        return
    repo = unit.deps.repository
    await repo.lock_office(unit.conn, event.practice_id)
    added = await repo.add_office_entry(
        unit.conn,
        entry_id=domain.office_entry_id(event.practice_id, event.booking_id),
        practice_id=event.practice_id,
        booking_id=event.booking_id,
        delta=decision.office_score_delta,
        cause=decision.office_cause,
        occurred_at=event.cancelled_at,
        event_id=unit.event.id,
    )
    if not added:
        return  # this booking cost the office already (a replay)
    score = domain.office_score(await repo.office_deltas(unit.conn, event.practice_id))
    unit.emit(
        SCORING_EVENTS,
        OfficeScoreChanged.new(
            practice_id=event.practice_id,
            booking_id=event.booking_id,
            delta=decision.office_score_delta,
            score=score,
            cause=decision.office_cause,
        ),
        subject=event.practice_id,
    )


# --- patient standing ---------------------------------------------------------------------------


async def configure_standing(unit: Unit[ScoringDeps], event: PracticeConfigured) -> None:
    """Keep the practice's `standing` rules (the newest by their own time)."""
    rules = event.standing
    await unit.deps.repository.set_standing_rules(
        unit.conn,
        event.practice_id,
        domain.StandingRules(
            enabled=rules.enabled,
            window_days=rules.window_days,
            forgive_first=rules.forgive_first,
            deposit_required_after=rules.deposit_required_after,
            prepayment_required_after=rules.prepayment_required_after,
            online_booking_blocked_after=rules.online_booking_blocked_after,
        ),
        configured_at=unit.event.envelope.time,
    )


async def excuse_waived_case(unit: Unit[ScoringDeps], event: ChargeWaived) -> None:
    """A fee waived after the fact: the booking's case no longer counts, and the standing may move down."""
    repo = unit.deps.repository
    at = unit.event.envelope.time
    for case in await repo.cases_of_booking(unit.conn, event.booking_id):
        current = await repo.lock_standing(unit.conn, case["practice_id"], case["patient_id"])
        if await repo.excuse_case(unit.conn, case["case_id"], at=at):
            await _move_standing(unit, repo, current, at=at)


async def _add_case(
    unit: Unit[ScoringDeps], practice_id: str, patient_id: str, booking_id: str, kind: str, *, at: datetime
) -> None:
    repo = unit.deps.repository
    current = await repo.lock_standing(unit.conn, practice_id, patient_id)
    added = await repo.add_case(
        unit.conn,
        case_id=domain.case_id(booking_id, kind),
        practice_id=practice_id,
        patient_id=patient_id,
        booking_id=booking_id,
        kind=kind,
        occurred_at=at,
        event_id=unit.event.id,
    )
    if added:
        await _move_standing(unit, repo, current, at=at)


async def _move_standing(unit: UnitOfWork[Any], repo: Any, current: Any, *, at: datetime) -> None:
    """Work the standing out at `at` from the counted cases; store it and announce a move. A
    practice without `standing.enabled` keeps every patient in good standing (no events)."""
    practice_id, patient_id = current["practice_id"], current["patient_id"]
    rules = await repo.standing_rules(unit.conn, practice_id)
    now = domain.patient_standing(await repo.counted_case_times(unit.conn, practice_id, patient_id), at, rules)
    previous = current["standing"]
    standing = now.standing if rules.enabled else "good"
    moved = standing != previous
    await repo.save_standing(
        unit.conn,
        practice_id,
        patient_id,
        standing=standing,
        count=now.count,
        changed_at=at if moved else None,
        next_review_at=now.next_review_at if rules.enabled else None,
    )
    if not moved:
        return
    unit.emit(
        SCORING_EVENTS,
        PatientStandingChanged.new(
            patient_id=patient_id,
            practice_id=practice_id,
            standing=standing,
            previous=previous,
            count=now.count,
            window_days=rules.window_days,
            reason=domain.standing_reason(now, previous, rules)
            if rules.enabled
            else "The practice no longer keeps patient standing: back to good standing.",
        ),
        subject=patient_id,
        time=at,
    )


def standing_review(settings: ScoringSettings) -> DueWork[Any, Any]:
    """Background job: move standings down as their oldest counted case ages out."""
    return DueWork(
        name="review_standings",
        claim=repository.claim_due_standings,
        act=review_standing,
        key=lambda row: f"{row['practice_id']}:{row['patient_id']}",
        interval_seconds=settings.standing_review_poll_seconds,
        batch_size=settings.standing_review_batch_size,
    )


async def review_standing(unit: WorkUnit[Any], row: asyncpg.Record) -> None:
    # Decided at the time the case aged out, so a late run moves the same way at the same time.
    await _move_standing(unit, unit.deps.repository, row, at=row["next_review_at"])


# --- reinstatement ------------------------------------------------------------------------------


async def reinstate_professional(unit: Unit[ScoringDeps], event: ProfessionalReinstated) -> None:
    repo = unit.deps.repository
    professional = await repo.find_professional_for_update(unit.conn, event.professional_id)
    if professional is None or professional["suspended_at"] is None:
        log.info("reinstatement of a professional who is not suspended", professional_id=event.professional_id)
        return
    reinstated = await repo.reinstate(
        unit.conn,
        event.professional_id,
        reinstated_at=event.reinstated_at,
        reviewer_id=event.reviewer_id,
        note=event.note,
        suspended_at=professional["suspended_at"],
        suspension_holds=list(professional["suspension_holds"] or []),
        event_id=unit.event.id,
    )
    if reinstated:
        unit.emit(
            SCORING_EVENTS,
            AccountReinstated.new(professional_id=event.professional_id, reinstated_at=event.reinstated_at),
            subject=event.professional_id,
            time=event.reinstated_at,
        )

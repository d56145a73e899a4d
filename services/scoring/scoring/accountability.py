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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from shared.background import DueWork, WorkUnit
from shared.consumer import SetBased, Unit, UnitOfWork
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


# --- booking.events.v1: one handler per type, set-based (issue 18) ----------------------------
# Each takes every record of its type in a wave at once (different bookings), and costs a fixed
# number of statements whatever their number: the professionals' scores first, then the
# offices', then the patients' standings (the lock order). Every record is checked before
# anything is stored, so a refused one fails the set and the consumer retries record by record.


async def handle_cancellations(units: Sequence[Unit[ScoringDeps]], events: Sequence[BookingCancelled]) -> None:
    """The professional's score (handlers.score), then the office's, then the patient's case."""
    records = list(zip(units, events, strict=True))
    scorings = [handlers.cancellation_scoring(unit, event) for unit, event in records]
    await handlers.score([s for s in scorings if s is not None])
    await charge_offices(records)
    cases = []
    for unit, event in records:
        kind = domain.counts_towards_standing(event.actor.kind, event.classification, event.decision.fee_waived)
        if kind is not None:
            cases.append(_Case(unit, event.practice_id, event.patient_id, event.booking_id, kind, event.cancelled_at))
    await add_cases(cases)


on_cancelled = SetBased(handle_cancellations)


async def handle_no_shows(units: Sequence[Unit[ScoringDeps]], events: Sequence[BookingNoShowRecorded]) -> None:
    """The professional's score when the professional did not attend; the patient's case when
    the patient did not."""
    records = list(zip(units, events, strict=True))
    scorings = [handlers.no_show_scoring(unit, event) for unit, event in records]
    await handlers.score([s for s in scorings if s is not None])
    await add_cases(
        [
            _Case(unit, event.practice_id, event.patient_id, event.booking_id, "no_show", event.recorded_at)
            for unit, event in records
            if event.party == "patient" and not event.decision.fee_waived
        ]
    )


on_no_show = SetBased(handle_no_shows)


def _office_charge(event: BookingCancelled) -> tuple[int, str] | None:
    """(delta, cause) when staff cancelled a booked professional and the policy decided what it
    costs the office; None otherwise."""
    decision = event.decision
    if (
        event.actor.kind != "staff"
        or event.professional_id is None
        or decision.office_score_delta is None
        or decision.office_cause is None
    ):
        return None
    return decision.office_score_delta, decision.office_cause


class _Charge(NamedTuple):
    unit: Unit[ScoringDeps]
    event: BookingCancelled
    entry_id: str
    delta: int
    cause: str


async def charge_offices(records: Sequence[tuple[Unit[ScoringDeps], BookingCancelled]]) -> None:
    """Staff cancelling booked professionals: each office's score moves by what the policy
    decided, once per booking (the offices locked in one statement, the entries appended in one,
    the totals read in one); two charges of one office in a set announce the scores one after
    the other would."""
    entries = []
    for unit, event in records:
        charge = _office_charge(event)
        if charge is not None:
            entry_id = domain.office_entry_id(event.practice_id, event.booking_id)
            entries.append(_Charge(unit, event, entry_id, *charge))
    if not entries:
        return
    conn, repo = entries[0].unit.conn, entries[0].unit.deps.repository
    await repo.lock_offices(conn, [e.event.practice_id for e in entries])
    fresh = set(
        await repo.add_office_entries(
            conn,
            [
                {
                    "entry_id": entry_id,
                    "practice_id": event.practice_id,
                    "booking_id": event.booking_id,
                    "delta": delta,
                    "cause": cause,
                    "occurred_at": event.cancelled_at,
                    "event_id": unit.event.id,
                }
                for unit, event, entry_id, delta, cause in entries
            ],
        )
    )
    added = []
    for entry in entries:
        if entry.entry_id in fresh:  # otherwise this booking cost the office already (a replay)
            fresh.discard(entry.entry_id)
            added.append(entry)
    if not added:
        return
    # The ledgers with this set's entries in them, less them: the score each record starts from.
    totals = await repo.office_totals(conn, sorted({e.event.practice_id for e in added}))
    for _, event, _, delta, _ in added:
        totals[event.practice_id] -= delta
    for unit, event, _, delta, cause in added:
        totals[event.practice_id] += delta
        unit.emit(
            SCORING_EVENTS,
            OfficeScoreChanged.new(
                practice_id=event.practice_id,
                booking_id=event.booking_id,
                delta=delta,
                score=domain.office_score([totals[event.practice_id]]),
                cause=cause,
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
        pair = (case["practice_id"], case["patient_id"])
        current = await repo.lock_standings(unit.conn, [pair])
        if await repo.excuse_case(unit.conn, case["case_id"], at=at):
            await _move_standings(unit.conn, repo, current, [_Move(unit, pair, at)])


Pair = tuple[str, str]  # (practice_id, patient_id): whose standing, where


@dataclass(frozen=True)
class _Case:
    """A patient's no-show or late cancellation, as one record brings it."""

    unit: Unit[ScoringDeps]
    practice_id: str
    patient_id: str
    booking_id: str
    kind: str
    at: datetime

    @property
    def case_id(self) -> str:
        return domain.case_id(self.booking_id, self.kind)

    @property
    def pair(self) -> Pair:
        return self.practice_id, self.patient_id


@dataclass(frozen=True)
class _Move:
    """A standing to work out again at `at`, announced by `unit` if it moves; `case_id` names the
    case its record added (counted from this move on, not before)."""

    unit: UnitOfWork[Any]
    pair: Pair
    at: datetime
    case_id: str | None = None


async def add_cases(cases: Sequence[_Case]) -> None:
    """Record the cases (the standings locked in one statement, the cases added in one) and move
    the standings of those that are new; a case known already (a replay) moves nothing."""
    if not cases:
        return
    conn, repo = cases[0].unit.conn, cases[0].unit.deps.repository
    current = await repo.lock_standings(conn, [c.pair for c in cases])
    fresh = set(
        await repo.add_cases(
            conn,
            [
                {
                    "case_id": c.case_id,
                    "practice_id": c.practice_id,
                    "patient_id": c.patient_id,
                    "booking_id": c.booking_id,
                    "kind": c.kind,
                    "occurred_at": c.at,
                    "event_id": c.unit.event.id,
                }
                for c in cases
            ],
        )
    )
    moves = []
    for c in cases:
        if c.case_id in fresh:
            fresh.discard(c.case_id)  # the same case twice in a set: the first added it
            moves.append(_Move(c.unit, c.pair, c.at, c.case_id))
    await _move_standings(conn, repo, current, moves)


async def _move_standings(conn: Any, repo: Any, current: Mapping[Pair, Any], moves: Sequence[_Move]) -> None:
    """Work each standing out at its move's time from the counted cases, move after move in
    their order, as if one after the other: a patient's second move in a set starts from the
    standing the first left, and counts the first's case but not a later one's. Then store the
    standings (one statement) and announce each move by its own unit. A practice without
    `standing.enabled` keeps every patient in good standing (no events)."""
    if not moves:
        return
    pairs = list(dict.fromkeys(m.pair for m in moves))
    rules = await repo.standing_rules_of(conn, sorted({practice_id for practice_id, _ in pairs}))
    counted = await repo.counted_cases(conn, pairs)
    arriving = {m.case_id for m in moves if m.case_id is not None}
    times = {pair: [t for case_id, t in counted[pair] if case_id not in arriving] for pair in pairs}
    arrival = {case_id: t for pair in pairs for case_id, t in counted[pair] if case_id in arriving}
    standings = {
        pair: {
            "standing": current[pair]["standing"],
            "count": current[pair]["count"],
            "changed_at": None,  # kept as stored unless a move changes it
            "next_review_at": current[pair]["next_review_at"],
        }
        for pair in pairs
    }
    for move in moves:
        if move.case_id in arrival:
            times[move.pair].append(arrival[move.case_id])
        practice_id, patient_id = move.pair
        practice = rules[practice_id]
        now = domain.patient_standing(times[move.pair], move.at, practice)
        row = standings[move.pair]
        previous = row["standing"]
        standing = now.standing if practice.enabled else "good"
        row.update(standing=standing, count=now.count, next_review_at=now.next_review_at if practice.enabled else None)
        if standing == previous:
            continue
        row["changed_at"] = move.at
        move.unit.emit(
            SCORING_EVENTS,
            PatientStandingChanged.new(
                patient_id=patient_id,
                practice_id=practice_id,
                standing=standing,
                previous=previous,
                count=now.count,
                window_days=practice.window_days,
                reason=domain.standing_reason(now, previous, practice)
                if practice.enabled
                else "The practice no longer keeps patient standing: back to good standing.",
            ),
            subject=patient_id,
            time=move.at,
        )
    await repo.save_standings(
        conn, [{"practice_id": p, "patient_id": pat, **row} for (p, pat), row in standings.items()]
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
    pair = (row["practice_id"], row["patient_id"])
    await _move_standings(unit.conn, unit.deps.repository, {pair: row}, [_Move(unit, pair, row["next_review_at"])])


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

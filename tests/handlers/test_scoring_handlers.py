"""scoring's handlers against an in-memory repository (no I/O): what the domain tables
(tests/unit/test_scoring_domain.py) cannot see — the ledger and holds as the handlers write them
(a penalty once per booking, holds stacked behind the stored ones), one suspension however many
holds follow, decisions without their penalty refused before anything is stored, and excuses
recorded, refused, reviewed and recalculated through the handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from scoring import domain, repository
from scoring.accountability import on_cancelled, on_no_show
from scoring.handlers import ScoringDeps, recalculate_scores, record_excuse, review_excuse, score_completion
from shared.consumer import Unit
from shared.contracts.booking import BookingCancelled, BookingCompleted, BookingNoShowRecorded
from shared.contracts.common import Actor, Decision
from shared.contracts.upstream import ExcuseReviewed, ExcuseSubmitted, ScoreRecalculationRequested
from shared.testing import assert_same_functions, unique
from shared.topics import BOOKING_EVENTS, SCORING_EVENTS, UPSTREAM_PROFESSIONALS

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class FakeScoringRepository:
    """The functions of scoring/repository.py the handlers call, over dicts (rows as dicts)."""

    def __init__(self) -> None:
        self.professionals: dict[str, dict[str, Any]] = {}
        self.ledger: dict[str, dict[str, Any]] = {}  # entry_id -> entry, in insertion order
        self.holds: dict[str, dict[str, Any]] = {}  # hold_id -> hold
        self.excuses: dict[str, dict[str, Any]] = {}  # excuse_id -> excuse

    # --- professionals, ledger, holds ---

    async def lock_professionals(self, conn: Any, professional_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        rows = {}
        for professional_id in sorted(set(professional_ids)):
            row = self.professionals.setdefault(
                professional_id, {"professional_id": professional_id, "suspended_at": None, "suspension_holds": None}
            )
            rows[professional_id] = dict(row)
        return rows

    async def find_professional_for_update(self, conn: Any, professional_id: str) -> dict[str, Any] | None:
        row = self.professionals.get(professional_id)
        return dict(row) if row else None

    async def add_ledger_entry(
        self,
        conn: Any,
        *,
        entry_id: str,
        professional_id: str,
        booking_id: str | None,
        delta: int,
        cause: str,
        occurred_at: datetime,
        event_id: str,
    ) -> bool:
        if entry_id in self.ledger:
            return False
        self.ledger[entry_id] = {
            "professional_id": professional_id,
            "booking_id": booking_id,
            "delta": delta,
            "cause": cause,
            "occurred_at": occurred_at,
            "event_id": event_id,
        }
        return True

    async def add_ledger_entries(self, conn: Any, entries: Sequence[Mapping[str, Any]]) -> set[str]:
        return {e["entry_id"] for e in entries if await self.add_ledger_entry(conn, **e)}

    async def ledger_totals(self, conn: Any, professional_ids: Sequence[str]) -> dict[str, int]:
        return {p: sum(await self.ledger_deltas(conn, p)) for p in professional_ids}

    async def ledger_deltas(self, conn: Any, professional_id: str) -> list[int]:
        return [e["delta"] for e in self.ledger.values() if e["professional_id"] == professional_id]

    async def ledger_entries(self, conn: Any, professional_id: str) -> list[domain.Entry]:
        rows = sorted(
            (e for e in self.ledger.values() if e["professional_id"] == professional_id), key=lambda e: e["occurred_at"]
        )
        return [domain.Entry(booking_id=e["booking_id"], delta=e["delta"], cause=e["cause"]) for e in rows]

    async def has_penalty(self, conn: Any, professional_id: str, booking_id: str) -> bool:
        return any(
            e["professional_id"] == professional_id
            and e["booking_id"] == booking_id
            and e["cause"] in domain.PENALTY_CAUSES
            for e in self.ledger.values()
        )

    async def holds_by_professional(self, conn: Any, professional_ids: Sequence[str]) -> dict[str, list[domain.Hold]]:
        return {
            p: [
                repository.hold_from_row(h)
                for h in sorted(
                    (h for h in self.holds.values() if h["professional_id"] == p),
                    key=lambda h: (h["occurred_at"], h["hold_id"]),
                )
            ]
            for p in professional_ids
        }

    async def add_holds(self, conn: Any, holds: Sequence[Mapping[str, Any]]) -> None:
        for h in holds:
            self.holds.setdefault(
                h["hold_id"],
                {
                    **h,
                    "status": "running",
                    "lift_cause": None,
                    "lifted_at": None,
                    "excused_at": None,
                    "excuse_id": None,
                },
            )

    async def suspend_professionals(
        self, conn: Any, suspensions: Sequence[tuple[str, datetime, Sequence[str]]]
    ) -> set[str]:
        suspended = set()
        for professional_id, at, hold_ids in suspensions:
            row = self.professionals[professional_id]
            if row["suspended_at"] is None:
                row.update(suspended_at=at, suspension_holds=list(hold_ids))
                suspended.add(professional_id)
        return suspended

    # --- excuses ---

    async def get_excuse(self, conn: Any, excuse_id: str, *, for_update: bool = False) -> dict[str, Any] | None:
        row = self.excuses.get(excuse_id)
        return dict(row) if row else None

    async def add_excuse(
        self,
        conn: Any,
        *,
        excuse_id: str,
        professional_id: str,
        booking_id: str,
        document_ref: str,
        submitted_at: datetime,
        status: str,
        reason: str | None,
        message: str | None,
        event_id: str,
    ) -> bool:
        if excuse_id in self.excuses:
            return False
        self.excuses[excuse_id] = {
            "excuse_id": excuse_id,
            "professional_id": professional_id,
            "booking_id": booking_id,
            "document_ref": document_ref,
            "submitted_at": submitted_at,
            "status": status,
            "reason": reason,
            "message": message,
            "decision": None,
            "reviewer_id": None,
            "reviewed_at": None,
        }
        return True

    async def complete_excuse(
        self, conn: Any, *, excuse_id: str, booking_id: str, document_ref: str, submitted_at: datetime, event_id: str
    ) -> bool:
        row = self.excuses[excuse_id]
        if row["submitted_at"] is not None:
            return False
        row.update(booking_id=booking_id, document_ref=document_ref, submitted_at=submitted_at)
        return True

    async def add_unknown_excuse_review(
        self,
        conn: Any,
        *,
        excuse_id: str,
        professional_id: str | None,
        decision: str,
        reviewer_id: str,
        reviewed_at: datetime,
        reason: str,
        message: str,
        event_id: str,
    ) -> bool:
        if excuse_id in self.excuses:
            return False
        self.excuses[excuse_id] = {
            "excuse_id": excuse_id,
            "professional_id": professional_id,
            "booking_id": None,
            "document_ref": None,
            "submitted_at": None,
            "status": "rejected",
            "reason": reason,
            "message": message,
            "decision": decision,
            "reviewer_id": reviewer_id,
            "reviewed_at": reviewed_at,
        }
        return True

    async def review_excuse(
        self,
        conn: Any,
        *,
        excuse_id: str,
        status: str,
        reason: str | None,
        message: str | None,
        decision: str,
        reviewer_id: str,
        reviewed_at: datetime,
        event_id: str,
    ) -> None:
        self.excuses[excuse_id].update(
            status=status,
            reason=reason,
            message=message,
            decision=decision,
            reviewer_id=reviewer_id,
            reviewed_at=reviewed_at,
        )

    async def note_review(
        self, conn: Any, *, excuse_id: str, decision: str, reviewer_id: str, reviewed_at: datetime, event_id: str
    ) -> bool:
        row = self.excuses[excuse_id]
        if row["decision"] is not None:
            return False
        row.update(decision=decision, reviewer_id=reviewer_id, reviewed_at=reviewed_at)
        return True

    async def excuse_hold(
        self, conn: Any, professional_id: str, booking_id: str, *, excuse_id: str, at: datetime
    ) -> tuple[str, bool] | None:
        for h in self.holds.values():
            if h["professional_id"] == professional_id and h["booking_id"] == booking_id and h["excused_at"] is None:
                lifted_now = h["status"] == "running"
                h.update(excused_at=at, excuse_id=excuse_id, status="lifted")
                if lifted_now:
                    h.update(lift_cause="excused", lifted_at=at)
                return h["hold_id"], lifted_now
        return None

    # --- recalculation ---

    async def approved_excuse_bookings(self, conn: Any, professional_id: str) -> list[str]:
        rows = [
            e for e in self.excuses.values() if e["professional_id"] == professional_id and e["status"] == "approved"
        ]
        return [e["booking_id"] for e in sorted(rows, key=lambda e: (e["reviewed_at"], e["excuse_id"]))]

    async def professionals_to_recalculate(self, conn: Any) -> list[str]:
        excused = {(e["professional_id"], e["booking_id"]) for e in self.ledger.values() if e["cause"] == "excused"}
        return sorted(
            {
                e["professional_id"]
                for e in self.excuses.values()
                if e["status"] == "approved" and (e["professional_id"], e["booking_id"]) not in excused
            }
        )


Handle = Callable[..., Awaitable[list[tuple[str, dict[str, Any]]]]]


@pytest.fixture
def handle(unit_for: Callable[..., Unit[Any]]) -> Handle:
    """`await handle(handler, payload, repo, deps=None, **unit_for options)`: the handler run on
    a fresh unit (a new envelope id each time, as a replay has); returns what it emitted as
    (type, data), after checking every event is keyed by its professional."""

    async def handle(
        handler: Any, payload: Any, repo: FakeScoringRepository, *, deps: ScoringDeps | None = None, **kw: Any
    ) -> list[tuple[str, dict[str, Any]]]:
        topic = BOOKING_EVENTS if payload.event_type.startswith("booking.") else UPSTREAM_PROFESSIONALS
        kw.setdefault(
            "subject", getattr(payload, "booking_id", None) or getattr(payload, "professional_id", None) or "all"
        )
        unit = unit_for("scoring", deps or ScoringDeps(repository=repo), topic, payload, **kw)
        await handler(unit, payload)
        for e in unit.emitted:
            assert (e.topic, e.key) == (SCORING_EVENTS, e.envelope["data"]["professional_id"])
        return [(e.envelope["type"], e.envelope["data"]) for e in unit.emitted]

    return handle


def decision(classification: str, score_delta: int | None, hold_days: int | None) -> Decision:
    return Decision.new(
        allowed=True,
        classification=classification,
        charge_card=False,
        deposit_action="none",
        score_delta=score_delta,
        hold_days=hold_days,
        policy_version="r1.s0",
    )


def cancelled(
    professional_id: str,
    *,
    at: datetime = START,
    classification: str = "late",
    score_delta: int | None = -50,
    hold_days: int | None = 7,
    actor_kind: str = "professional",
    booking_id: str | None = None,
) -> BookingCancelled:
    starts_at = at + timedelta(hours=5)
    return BookingCancelled.new(
        booking_id=booking_id or unique("bk"),
        request_id=unique("req"),
        practice_id="practice-1",
        patient_id="pat-1",
        professional_id=professional_id,
        practitioner_id="dr-1",
        service_code="hygiene",
        starts_at=starts_at,
        ends_at=starts_at + timedelta(minutes=45),
        cancelled_at=at,
        actor=Actor.new(
            kind=actor_kind, id=professional_id if actor_kind == "professional" else unique(actor_kind), roles=[]
        ),
        channel="professional_app" if actor_kind == "professional" else "patient_portal",
        status_label="Cancelled",
        classification=classification,
        decision=decision(classification, score_delta, hold_days),
    )


def no_show(
    professional_id: str | None, *, score_delta: int | None = -100, hold_days: int | None = 14
) -> BookingNoShowRecorded:
    return BookingNoShowRecorded.new(
        booking_id=unique("bk"),
        request_id=unique("req"),
        practice_id="practice-1",
        patient_id="pat-1",
        professional_id=professional_id,
        party="professional",
        code="DNA",
        starts_at=START,
        recorded_at=START + timedelta(minutes=70),
        decision=decision("no_show", score_delta, hold_days),
    )


def submitted(professional_id: str, booking_id: str, excuse_id: str | None = None) -> ExcuseSubmitted:
    return ExcuseSubmitted.new(
        excuse_id=excuse_id or unique("excuse"),
        professional_id=professional_id,
        booking_id=booking_id,
        document_ref="doc-1",
        submitted_at=START + timedelta(days=1),
    )


def reviewed(excuse_id: str, decision: str = "approved") -> ExcuseReviewed:
    return ExcuseReviewed.new(
        excuse_id=excuse_id, decision=decision, reviewer_id="rev-1", reviewed_at=START + timedelta(days=2)
    )


def test_the_fake_has_the_repositorys_signatures() -> None:
    assert_same_functions(FakeScoringRepository(), repository)


async def test_a_late_cancellation_costs_the_policys_penalty_and_a_hold_once(handle: Handle) -> None:
    repo, pro = FakeScoringRepository(), unique("pro")
    event = cancelled(pro)
    emitted = await handle(on_cancelled, event, repo)

    assert emitted == [
        (
            "score.changed",
            {
                "professional_id": pro,
                "booking_id": event.booking_id,
                "delta": -50,
                "score": 50,
                "cause": "late_cancelled",
            },
        ),
        (
            "hold.placed",
            {
                "hold_id": domain.hold_id(pro, event.booking_id),
                "professional_id": pro,
                "booking_id": event.booking_id,
                "cause": "late_cancellation",
                "starts_at": "2026-03-02T09:00:00Z",
                "ends_at": "2026-03-09T09:00:00Z",
            },
        ),
    ]
    assert await handle(on_cancelled, event, repo) == []  # replayed under a new envelope id
    assert [(e["booking_id"], e["delta"], e["cause"]) for e in repo.ledger.values()] == [
        (event.booking_id, -50, "late_cancelled")
    ]
    assert len(repo.holds) == 1


async def test_holds_stack_behind_the_stored_ones(handle: Handle) -> None:
    repo, pro = FakeScoringRepository(), unique("pro")
    await handle(on_cancelled, cancelled(pro), repo)
    emitted = await handle(on_no_show, no_show(pro), repo)  # 70 minutes later, while the 7-day hold runs

    [(_, changed), (_, placed)] = emitted
    assert (changed["delta"], changed["score"], changed["cause"]) == (-100, -50, "no_show")  # unclamped
    assert (placed["cause"], placed["starts_at"], placed["ends_at"]) == (
        "no_show",
        "2026-03-09T09:00:00Z",
        "2026-03-23T09:00:00Z",
    )


async def test_a_timely_cancellation_costs_its_delta_and_places_no_hold(handle: Handle) -> None:
    repo, pro = FakeScoringRepository(), unique("pro")
    emitted = await handle(on_cancelled, cancelled(pro, classification="timely", score_delta=-10, hold_days=None), repo)
    assert [(t, d["delta"], d["cause"]) for t, d in emitted] == [("score.changed", -10, "cancelled")]
    assert repo.holds == {}


async def test_the_third_unexcused_hold_suspends_once(handle: Handle) -> None:
    repo, pro = FakeScoringRepository(), unique("pro")
    types = []
    for days in (0, 30, 60, 90):
        emitted = await handle(on_cancelled, cancelled(pro, at=START + timedelta(days=days)), repo)
        types.append([t for t, _ in emitted])

    assert types == [
        ["score.changed", "hold.placed"],
        ["score.changed", "hold.placed"],
        ["score.changed", "hold.placed", "account.suspended"],
        ["score.changed", "hold.placed"],  # held and scored, but suspended already
    ]
    first_three = [h["hold_id"] for h in sorted(repo.holds.values(), key=lambda h: h["occurred_at"])][:3]
    assert repo.professionals[pro]["suspension_holds"] == first_three
    assert repo.professionals[pro]["suspended_at"] == START + timedelta(days=60)


async def test_the_suspension_threshold_comes_from_the_deps(handle: Handle) -> None:
    repo, pro = FakeScoringRepository(), unique("pro")
    emitted = await handle(on_cancelled, cancelled(pro), repo, deps=ScoringDeps(repository=repo, suspension_holds=1))
    assert [t for t, _ in emitted] == ["score.changed", "hold.placed", "account.suspended"]


@pytest.mark.parametrize(
    "event", [cancelled("pro-x", score_delta=None), no_show("pro-x", score_delta=None)], ids=["cancelled", "no_show"]
)
async def test_a_decision_without_its_penalty_is_refused_before_anything_is_stored(event: Any, handle: Handle) -> None:
    repo = FakeScoringRepository()
    handler = on_cancelled if isinstance(event, BookingCancelled) else on_no_show
    with pytest.raises(domain.DecisionWithoutPenalty):
        await handle(handler, event, repo)
    assert (repo.professionals, repo.ledger, repo.holds) == ({}, {}, {})


async def test_a_professional_no_show_naming_no_professional_is_refused(handle: Handle) -> None:
    repo = FakeScoringRepository()
    with pytest.raises(ValueError, match="names no professional_id"):
        await handle(on_no_show, no_show(None), repo, subject="bk-1")
    assert repo.ledger == {}


async def test_cancellations_by_anyone_else_never_touch_the_professional(handle: Handle) -> None:
    repo, pro = FakeScoringRepository(), unique("pro")
    assert (
        await handle(
            on_cancelled,
            cancelled(pro, actor_kind="patient", classification="timely", score_delta=None, hold_days=None),
            repo,
        )
        == []
    )
    assert (repo.professionals, repo.ledger) == ({}, {})


async def test_a_completion_earns_the_bonus_once(handle: Handle) -> None:
    repo, pro = FakeScoringRepository(), unique("pro")
    event = BookingCompleted.new(booking_id=unique("bk"), completed_at=START, professional_id=pro)
    assert await handle(score_completion, event, repo) == [
        (
            "score.changed",
            {"professional_id": pro, "booking_id": event.booking_id, "delta": 10, "score": 110, "cause": "completed"},
        )
    ]
    assert await handle(score_completion, event, repo) == []


async def test_an_excuse_for_an_unpenalised_booking_is_recorded_as_refused(handle: Handle) -> None:
    repo, pro = FakeScoringRepository(), unique("pro")
    await handle(
        score_completion, BookingCompleted.new(booking_id="bk-done", completed_at=START, professional_id=pro), repo
    )
    unknown_pro, unpenalised = submitted(unique("pro"), "bk-1"), submitted(pro, "bk-done")

    assert await handle(record_excuse, unknown_pro, repo) == []
    assert await handle(record_excuse, unpenalised, repo) == []

    assert repo.excuses[unknown_pro.excuse_id]["status"] == "rejected"
    assert repo.excuses[unknown_pro.excuse_id]["reason"] == domain.UNKNOWN_PROFESSIONAL
    assert repo.excuses[unpenalised.excuse_id]["status"] == "rejected"
    assert repo.excuses[unpenalised.excuse_id]["reason"] == domain.UNKNOWN_BOOKING
    assert "bk-done" in repo.excuses[unpenalised.excuse_id]["message"]


async def test_an_approved_excuse_lifts_the_hold_and_the_recalculation_takes_the_penalty_out_once(
    handle: Handle,
) -> None:
    repo, pro = FakeScoringRepository(), unique("pro")
    penalised = cancelled(pro)
    await handle(on_cancelled, penalised, repo)
    excuse = submitted(pro, penalised.booking_id)
    await handle(record_excuse, excuse, repo)
    assert repo.excuses[excuse.excuse_id]["status"] == "pending"

    emitted = await handle(review_excuse, reviewed(excuse.excuse_id), repo, subject=pro)
    assert emitted == [
        (
            "hold.lifted",
            {"hold_id": domain.hold_id(pro, penalised.booking_id), "professional_id": pro, "cause": "excused"},
        )
    ]
    assert repo.excuses[excuse.excuse_id]["status"] == "approved"
    assert (
        await handle(review_excuse, reviewed(excuse.excuse_id, "rejected"), repo, subject=pro) == []
    )  # the first decision stands
    assert repo.excuses[excuse.excuse_id]["status"] == "approved"

    recalculation = ScoreRecalculationRequested.new(professional_id=pro)
    assert await handle(recalculate_scores, recalculation, repo) == [
        (
            "score.changed",
            {
                "professional_id": pro,
                "booking_id": penalised.booking_id,
                "delta": 50,
                "score": 100,
                "cause": "recalculated",
            },
        )
    ]
    assert await handle(recalculate_scores, ScoreRecalculationRequested.new(), repo, subject="all") == []


async def test_a_review_of_an_excuse_never_submitted_is_recorded_as_rejected_for_the_subjects_professional(
    handle: Handle,
) -> None:
    repo, pro, excuse_id = FakeScoringRepository(), unique("pro"), unique("excuse")
    assert await handle(review_excuse, reviewed(excuse_id), repo, subject=pro) == []
    row = repo.excuses[excuse_id]
    assert (row["professional_id"], row["status"], row["reason"], row["decision"]) == (
        pro,
        "rejected",
        domain.UNKNOWN_EXCUSE,
        "approved",
    )

    # Its submission arriving late fills in the details; the refusal stands.
    await handle(on_cancelled, penalised := cancelled(pro), repo)
    assert await handle(record_excuse, submitted(pro, penalised.booking_id, excuse_id), repo) == []
    assert (repo.excuses[excuse_id]["status"], repo.excuses[excuse_id]["booking_id"]) == (
        "rejected",
        penalised.booking_id,
    )

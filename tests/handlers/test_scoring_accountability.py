"""scoring's second-release handlers (accountability.py) against an in-memory repository: a
patient's cases counted once per booking, the standing moved and announced only when it moves
and only where the practice keeps standing, waived cases leaving the count, the review job
moving a standing down when a case ages out; an office charged once per booking; a suspension
ended once by a reinstatement, its holds no longer counting."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_scoring_handlers import FakeScoringRepository

from scoring import accountability, domain, handlers, repository
from scoring.handlers import ScoringDeps
from shared.background import WorkUnit
from shared.consumer import Unit
from shared.contracts.billing import ChargeWaived
from shared.contracts.booking import BookingCancelled, BookingCompleted, BookingNoShowRecorded
from shared.contracts.common import Actor, Decision
from shared.contracts.upstream import PracticeConfigured, ProfessionalReinstated, StandingSettings
from shared.testing import assert_same_functions, unique
from shared.topics import BILLING_EVENTS, BOOKING_EVENTS, SCORING_EVENTS, UPSTREAM_PRACTICES, UPSTREAM_PROFESSIONALS

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
D = timedelta(days=1)


class FakeAccountabilityRepository(FakeScoringRepository):
    """The scoring repository's second-release functions too, over dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.rules: dict[str, tuple[domain.StandingRules, datetime]] = {}
        self.standings: dict[tuple[str, str], dict[str, Any]] = {}
        self.cases: dict[str, dict[str, Any]] = {}
        self.offices: dict[str, list[dict[str, Any]]] = {}
        self.office_entries: set[str] = set()
        self.reinstatements: dict[tuple[str, datetime], dict[str, Any]] = {}

    async def set_standing_rules(
        self, conn: Any, practice_id: str, rules: domain.StandingRules, *, configured_at: datetime
    ) -> None:
        known = self.rules.get(practice_id)
        if known is None or known[1] <= configured_at:
            self.rules[practice_id] = (rules, configured_at)

    async def standing_rules_of(self, conn: Any, practice_ids: Sequence[str]) -> dict[str, domain.StandingRules]:
        return {p: self.rules[p][0] if p in self.rules else domain.StandingRules() for p in practice_ids}

    async def lock_standings(
        self, conn: Any, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        rows = {}
        for practice_id, patient_id in sorted(set(pairs)):
            row = self.standings.setdefault(
                (practice_id, patient_id),
                {
                    "practice_id": practice_id,
                    "patient_id": patient_id,
                    "standing": "good",
                    "count": 0,
                    "changed_at": None,
                    "next_review_at": None,
                },
            )
            rows[(practice_id, patient_id)] = dict(row)
        return rows

    async def add_cases(self, conn: Any, cases: Sequence[Mapping[str, Any]]) -> set[str]:
        added = set()
        for case in cases:
            if case["case_id"] not in self.cases:
                self.cases[case["case_id"]] = {**case, "excused_at": None}
                added.add(case["case_id"])
        return added

    async def cases_of_booking(self, conn: Any, booking_id: str) -> list[dict[str, Any]]:
        return [dict(c) for c in self.cases.values() if c["booking_id"] == booking_id and c["excused_at"] is None]

    async def excuse_case(self, conn: Any, case_id: str, *, at: datetime) -> bool:
        case = self.cases[case_id]
        if case["excused_at"] is not None:
            return False
        case["excused_at"] = at
        return True

    async def counted_cases(
        self, conn: Any, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], list[tuple[str, datetime]]]:
        return {
            pair: sorted(
                (
                    (c["case_id"], c["occurred_at"])
                    for c in self.cases.values()
                    if (c["practice_id"], c["patient_id"]) == pair and c["excused_at"] is None
                ),
                key=lambda c: (c[1], c[0]),
            )
            for pair in pairs
        }

    async def save_standings(self, conn: Any, standings: Sequence[Mapping[str, Any]]) -> None:
        for s in standings:
            row = self.standings[(s["practice_id"], s["patient_id"])]
            row.update(standing=s["standing"], count=s["count"], next_review_at=s["next_review_at"])
            if s["changed_at"] is not None:
                row["changed_at"] = s["changed_at"]

    async def lock_offices(self, conn: Any, practice_ids: Sequence[str]) -> None:
        for practice_id in practice_ids:
            self.offices.setdefault(practice_id, [])

    async def add_office_entries(self, conn: Any, entries: Sequence[Mapping[str, Any]]) -> set[str]:
        added = set()
        for e in entries:
            if e["entry_id"] not in self.office_entries:
                self.office_entries.add(e["entry_id"])
                self.offices[e["practice_id"]].append(
                    {"booking_id": e["booking_id"], "delta": e["delta"], "cause": e["cause"]}
                )
                added.add(e["entry_id"])
        return added

    async def office_totals(self, conn: Any, practice_ids: Sequence[str]) -> dict[str, int]:
        return {p: sum(e["delta"] for e in self.offices.get(p, [])) for p in practice_ids}

    async def reinstate(
        self,
        conn: Any,
        professional_id: str,
        *,
        reinstated_at: datetime,
        reviewer_id: str,
        note: str | None,
        suspended_at: datetime,
        suspension_holds: Any,
        event_id: str,
    ) -> bool:
        if (professional_id, reinstated_at) in self.reinstatements:
            return False
        self.reinstatements[(professional_id, reinstated_at)] = {"reviewer_id": reviewer_id, "note": note}
        for hold_id in suspension_holds:
            self.holds[hold_id]["cleared_at"] = reinstated_at
        self.professionals[professional_id].update(suspended_at=None, suspension_holds=None)
        return True


Handle = Callable[..., Awaitable[list[tuple[str, str, dict[str, Any]]]]]

TOPIC = {"booking": BOOKING_EVENTS, "practice": UPSTREAM_PRACTICES, "charge": BILLING_EVENTS}


@pytest.fixture
def handle(unit_for: Callable[..., Unit[Any]]) -> Handle:
    """`await handle(handler, payload, repo, **unit_for options)` -> [(type, key, data)] emitted."""

    async def handle(handler: Any, payload: Any, repo: Any, **kw: Any) -> list[tuple[str, str, dict[str, Any]]]:
        topic = TOPIC.get(payload.event_type.split(".")[0], UPSTREAM_PROFESSIONALS)
        kw.setdefault("subject", getattr(payload, "booking_id", None) or getattr(payload, "practice_id", "x"))
        unit = unit_for("scoring", ScoringDeps(repository=repo), topic, payload, **kw)
        await handler(unit, payload)
        assert all(e.topic == SCORING_EVENTS for e in unit.emitted)
        return [(e.envelope["type"], e.key, e.envelope["data"]) for e in unit.emitted]

    return handle


def decision(classification: str, **extra: Any) -> Decision:
    return Decision.new(
        allowed=True,
        classification=classification,
        charge_card=False,
        deposit_action="none",
        policy_version="r1.s1",
        **extra,
    )


def cancelled(
    practice_id: str,
    patient_id: str,
    *,
    at: datetime,
    actor: str = "patient",
    classification: str = "late",
    professional_id: str | None = None,
    booking_id: str | None = None,
    **decided: Any,
) -> BookingCancelled:
    return BookingCancelled.new(
        booking_id=booking_id or unique("bk"),
        request_id=unique("req"),
        practice_id=practice_id,
        patient_id=patient_id,
        professional_id=professional_id,
        practitioner_id="dr-1",
        service_code="D1110",
        starts_at=at + timedelta(hours=5),
        ends_at=at + timedelta(hours=6),
        cancelled_at=at,
        actor=Actor.new(kind=actor, id=unique(actor)),
        channel="patient_portal" if actor == "patient" else "practice",
        status_label="Cancelled",
        classification=classification,
        decision=decision(classification, **decided),
    )


def no_show(practice_id: str, patient_id: str, *, at: datetime, **decided: Any) -> BookingNoShowRecorded:
    return BookingNoShowRecorded.new(
        booking_id=unique("bk"),
        request_id=unique("req"),
        practice_id=practice_id,
        patient_id=patient_id,
        party="patient",
        code="FTA",
        starts_at=at,
        recorded_at=at + timedelta(minutes=20),
        decision=decision("no_show", **decided),
    )


def configured(practice_id: str, **standing: Any) -> PracticeConfigured:
    return PracticeConfigured.new(
        practice_id=practice_id,
        name="Harbour Dental",
        timezone="Australia/Sydney",
        locale="en",
        standing=StandingSettings(**standing),
    )


def test_the_fake_has_the_repositorys_signatures() -> None:
    assert_same_functions(FakeAccountabilityRepository(), repository)


async def practice_with_standing(handle: Handle, repo: Any, **standing: Any) -> str:
    practice_id = unique("practice")
    await handle(accountability.configure_standing, configured(practice_id, enabled=True, **standing), repo, time=T0)
    return practice_id


async def test_the_standing_moves_up_at_each_threshold_once_and_is_keyed_by_the_patient(handle: Handle) -> None:
    repo = FakeAccountabilityRepository()
    practice_id, patient_id = await practice_with_standing(handle, repo), unique("pat")
    moves = []
    for n in range(5):
        event = (no_show if n % 2 else cancelled)(practice_id, patient_id, at=T0 + n * D)
        handler = accountability.on_no_show if n % 2 else accountability.on_cancelled
        moves.append(await handle(handler, event, repo))
    assert [m[0][2]["standing"] if m else None for m in moves] == [
        None,  # the first is forgiven
        None,  # one counted
        "deposit_required",
        "prepayment_required",
        "online_booking_blocked",
    ]
    kind, key, data = moves[2][0]
    assert (kind, key) == ("patient.standing_changed", patient_id)
    assert data == {
        "patient_id": patient_id,
        "practice_id": practice_id,
        "standing": "deposit_required",
        "previous": "good",
        "count": 2,
        "window_days": 365,
        "reason": data["reason"],
    }
    assert "3 no-shows or late cancellations" in data["reason"] and "(the first forgiven)" in data["reason"]


async def test_the_same_case_again_counts_once(handle: Handle) -> None:
    repo = FakeAccountabilityRepository()
    practice_id, patient_id = await practice_with_standing(handle, repo, forgive_first=False), unique("pat")
    event = no_show(practice_id, patient_id, at=T0)
    first = await handle(accountability.on_no_show, event, repo)
    second = await handle(accountability.on_no_show, event, repo)  # a replay: a new envelope id
    again = await handle(accountability.on_no_show, no_show(practice_id, patient_id, at=T0 + D), repo)
    assert first == [] and second == [] and len(repo.cases) == 2
    assert [d["standing"] for _, _, d in again] == ["deposit_required"]


async def test_a_practice_without_standing_counts_cases_but_moves_nobody(handle: Handle) -> None:
    repo, practice_id, patient_id = FakeAccountabilityRepository(), unique("practice"), unique("pat")
    emitted = [
        await handle(accountability.on_no_show, no_show(practice_id, patient_id, at=T0 + n * D), repo) for n in range(6)
    ]
    assert emitted == [[]] * 6 and len(repo.cases) == 6
    assert repo.standings[(practice_id, patient_id)]["standing"] == "good"


@pytest.mark.parametrize(
    ("event", "counts"),
    [
        (lambda p, pat: cancelled(p, pat, at=T0, actor="staff", fee_waived=True), False),  # waived at the time
        (lambda p, pat: cancelled(p, pat, at=T0, classification="timely"), False),
        (
            lambda p, pat: cancelled(p, pat, at=T0, actor="professional", professional_id="pro-1", score_delta=-50),
            False,
        ),
        (lambda p, pat: no_show(p, pat, at=T0, fee_waived=True), False),
        (lambda p, pat: cancelled(p, pat, at=T0, actor="staff"), True),
        (lambda p, pat: no_show(p, pat, at=T0), True),
    ],
)
async def test_which_cases_count(handle: Handle, event: Any, counts: bool) -> None:
    repo = FakeAccountabilityRepository()
    practice_id, patient_id = await practice_with_standing(handle, repo), unique("pat")
    payload = event(practice_id, patient_id)
    handler = accountability.on_no_show if isinstance(payload, BookingNoShowRecorded) else accountability.on_cancelled
    await handle(handler, payload, repo)
    assert len(repo.cases) == (1 if counts else 0)


async def test_a_fee_waived_later_takes_the_case_out_and_moves_the_standing_down(handle: Handle) -> None:
    repo = FakeAccountabilityRepository()
    practice_id, patient_id = await practice_with_standing(handle, repo, forgive_first=False), unique("pat")
    events = [no_show(practice_id, patient_id, at=T0 + n * D) for n in range(2)]
    for event in events:
        await handle(accountability.on_no_show, event, repo)
    assert repo.standings[(practice_id, patient_id)]["standing"] == "deposit_required"

    waived = ChargeWaived.new(charge_id=unique("ch"), booking_id=events[1].booking_id, request_id=unique("req"))
    moved = await handle(accountability.excuse_waived_case, waived, repo, time=T0 + 3 * D)
    again = await handle(accountability.excuse_waived_case, waived, repo, time=T0 + 4 * D)

    assert [(d["standing"], d["previous"], d["count"]) for _, _, d in moved] == [("good", "deposit_required", 1)]
    assert "moved back down" in moved[0][2]["reason"]
    assert again == []


async def test_the_review_job_moves_the_standing_down_when_a_case_ages_out(handle: Handle) -> None:
    repo = FakeAccountabilityRepository()
    practice_id, patient_id = await practice_with_standing(handle, repo, window_days=30), unique("pat")
    for n in range(3):
        await handle(accountability.on_no_show, no_show(practice_id, patient_id, at=T0 + n * D), repo)
    row = repo.standings[(practice_id, patient_id)]
    assert (row["standing"], row["next_review_at"]) == ("deposit_required", T0 + timedelta(minutes=20) + 30 * D)

    unit: WorkUnit[Any] = WorkUnit(conn=None, deps=ScoringDeps(repository=repo), service="scoring", now=T0 + 100 * D)
    await accountability.review_standing(unit, dict(row))

    [event] = unit.emitted
    data = event.envelope["data"]
    assert (event.key, data["standing"], data["previous"], data["count"]) == (patient_id, "good", "deposit_required", 1)
    assert event.envelope["time"].startswith((T0 + timedelta(minutes=20) + 30 * D).strftime("%Y-%m-%dT%H:%M"))
    assert repo.standings[(practice_id, patient_id)]["next_review_at"] == T0 + D + timedelta(minutes=20) + 30 * D


async def test_staff_cancelling_a_booked_professional_cost_the_office_once(handle: Handle) -> None:
    repo, practice_id = FakeAccountabilityRepository(), unique("practice")
    late = cancelled(
        practice_id,
        unique("pat"),
        at=T0,
        actor="staff",
        professional_id="pro-1",
        office_score_delta=-50,
        office_cause="late_cancelled_professional",
    )
    timely = cancelled(
        practice_id,
        unique("pat"),
        at=T0 + D,
        actor="staff",
        classification="timely",
        professional_id="pro-1",
        office_score_delta=-10,
        office_cause="cancelled_professional",
    )
    first = await handle(accountability.on_cancelled, late, repo)
    replay = await handle(accountability.on_cancelled, late, repo)
    second = await handle(accountability.on_cancelled, timely, repo)

    offices = [(t, k, d) for t, k, d in first + replay + second if t == "office.score_changed"]
    assert [(k, d["delta"], d["score"], d["cause"]) for _, k, d in offices] == [
        (practice_id, -50, 50, "late_cancelled_professional"),
        (practice_id, -10, 40, "cancelled_professional"),
    ]
    assert repo.professionals == {}  # the professional's own score is untouched


async def test_reinstatement_ends_the_suspension_once_and_its_holds_no_longer_count(handle: Handle) -> None:
    repo, professional_id = FakeAccountabilityRepository(), unique("pro")
    for n in range(3):
        event = cancelled(
            "practice-1",
            "pat-1",
            at=T0 + n * D,
            actor="professional",
            professional_id=professional_id,
            score_delta=-50,
            hold_days=7,
        )
        await handle(accountability.on_cancelled, event, repo)
    suspended = repo.professionals[professional_id]
    assert suspended["suspended_at"] == T0 + 2 * D and len(suspended["suspension_holds"]) == 3

    reinstated = ProfessionalReinstated.new(
        professional_id=professional_id, reviewer_id="ops-1", reinstated_at=T0 + 30 * D, note="Appeal upheld."
    )
    first = await handle(accountability.reinstate_professional, reinstated, repo)
    again = await handle(accountability.reinstate_professional, reinstated, repo)

    assert first == [
        (
            "account.reinstated",
            professional_id,
            {"professional_id": professional_id, "reinstated_at": "2026-04-01T09:00:00Z"},
        )
    ]
    assert again == []
    assert repo.professionals[professional_id]["suspended_at"] is None
    assert all(h["cleared_at"] == T0 + 30 * D for h in repo.holds.values())

    # One more hold after the reinstatement does not suspend again: the cleared three no longer count.
    fourth = cancelled(
        "practice-1",
        "pat-1",
        at=T0 + 40 * D,
        actor="professional",
        professional_id=professional_id,
        score_delta=-50,
        hold_days=7,
    )
    emitted = await handle(accountability.on_cancelled, fourth, repo)
    assert [t for t, _, _ in emitted] == ["score.changed", "hold.placed"]


async def test_reinstating_a_professional_who_is_not_suspended_changes_nothing(handle: Handle) -> None:
    repo = FakeAccountabilityRepository()
    reinstated = ProfessionalReinstated.new(professional_id=unique("pro"), reviewer_id="ops-1", reinstated_at=T0)
    assert await handle(accountability.reinstate_professional, reinstated, repo) == []
    assert repo.reinstatements == {}


# --- set-based (issue 18): a set of records costs a fixed number of calls, each record its own events


class CountingRepository:
    """A fake repository that counts the calls of each function, to show what a set costs."""

    def __init__(self, repo: FakeAccountabilityRepository) -> None:
        self.repo = repo
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        function = getattr(self.repo, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await function(*args, **kwargs)

        return counted


Emitted = list[tuple[str, str, dict[str, Any]]]


async def as_a_set(unit_for: Callable[..., Unit[Any]], handler: Any, payloads: list[Any], repo: Any) -> list[Emitted]:
    """The records handled as one set (one wave of the consumer); what each record emitted."""
    units = [
        unit_for("scoring", ScoringDeps(repository=repo), BOOKING_EVENTS, p, subject=p.booking_id) for p in payloads
    ]
    await handler.handle_many(units, payloads)
    return [[(e.envelope["type"], e.key, e.envelope["data"]) for e in unit.emitted] for unit in units]


async def one_by_one(handle: Handle, handler: Any, payloads: list[Any], repo: Any) -> list[Emitted]:
    """The same records each handled on its own, in their order (the per-record path)."""
    return [await handle(handler, p, repo) for p in payloads]


def state(repo: FakeAccountabilityRepository) -> Any:
    """What the records leave behind, for comparing two runs (whose envelope ids differ)."""

    def rows(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {k: {c: v for c, v in row.items() if c != "event_id"} for k, row in table.items()}

    return (repo.standings, rows(repo.cases), repo.offices, repo.professionals, rows(repo.ledger), repo.holds)


def cancellations(practice_id: str, patient_id: str, professional_id: str, n: int) -> list[BookingCancelled]:
    """A mix of every branch of booking.cancelled, `n` times over: one patient's late
    cancellations (the same patient twice and three times in the set), staff cancelling booked
    professionals (two charges of one office), one professional cancelling three bookings (holds
    that stack, then a suspension), a timely one that counts for nobody."""
    events: list[BookingCancelled] = []
    for i in range(n):
        at = T0 + i * 10 * D
        patient = f"{patient_id}-{i}"
        office = dict(office_score_delta=-50, office_cause="late_cancelled_professional")
        pro = dict(actor="professional", professional_id=f"{professional_id}-{i}", score_delta=-50, hold_days=7)
        events += [
            cancelled(practice_id, patient, at=at),
            cancelled(practice_id, patient, at=at + timedelta(hours=1)),
            cancelled(practice_id, patient, at=at + 2 * D, actor="staff", professional_id="pro-s", **office),
            cancelled(practice_id, unique("pat"), at=at + 3 * D, actor="staff", professional_id="pro-s", **office),
            cancelled(practice_id, unique("pat"), at=at, **pro),
            cancelled(practice_id, unique("pat"), at=at + D, **pro),
            cancelled(practice_id, unique("pat"), at=at + 2 * D, **pro),
            cancelled(practice_id, unique("pat"), at=at, classification="timely"),
        ]
    return events


@pytest.mark.parametrize("n", [1, 4])
async def test_a_set_of_cancellations_costs_one_call_of_each_kind_and_each_record_publishes_its_own(
    handle: Handle, unit_for: Callable[..., Unit[Any]], n: int
) -> None:
    practice_id, patient_id, professional_id = unique("practice"), unique("pat"), unique("pro")
    events = cancellations(practice_id, patient_id, professional_id, n)
    # One booking of the set was handled before (a replay): its case exists already.
    replayed = cancelled(practice_id, unique("pat"), at=T0 - D, actor="staff", professional_id="pro-s")
    events.insert(3, replayed)

    async def prepared() -> FakeAccountabilityRepository:
        repo = FakeAccountabilityRepository()
        rules = configured(practice_id, enabled=True, forgive_first=False)
        await handle(accountability.configure_standing, rules, repo, time=T0 - 2 * D)
        await handle(accountability.on_cancelled, replayed, repo)
        return repo

    counting = CountingRepository(await prepared())
    in_a_set = await as_a_set(unit_for, accountability.on_cancelled, events, counting)
    alone = await prepared()
    each_alone = await one_by_one(handle, accountability.on_cancelled, events, alone)

    assert in_a_set == each_alone
    assert state(counting.repo) == state(alone)
    # One call of each kind, whatever the set's size.
    assert counting.calls == Counter(
        {
            "lock_professionals": 1,
            "add_ledger_entries": 1,
            "ledger_totals": 1,
            "holds_by_professional": 1,
            "add_holds": 1,
            "suspend_professionals": 1,
            "lock_offices": 1,
            "add_office_entries": 1,
            "office_totals": 1,
            "lock_standings": 1,
            "add_cases": 1,
            "standing_rules_of": 1,
            "counted_cases": 1,
            "save_standings": 1,
        }
    )
    # What the first mix published, record by record (the replay and the timely one: nothing).
    types = [[t for t, _, _ in emitted] for emitted in in_a_set[:9]]
    assert types == [
        [],  # the patient's first case at this practice: one counted
        ["patient.standing_changed"],  # the second: deposit required
        ["office.score_changed", "patient.standing_changed"],  # the third, by staff: prepayment required
        [],  # the replay
        ["office.score_changed"],
        ["score.changed", "hold.placed"],
        ["score.changed", "hold.placed"],
        ["score.changed", "hold.placed", "account.suspended"],
        [],
    ]
    moves = [
        (d["standing"], d["previous"], d["count"]) for e in in_a_set[:3] for t, _, d in e if t.startswith("patient")
    ]
    assert moves == [("deposit_required", "good", 2), ("prepayment_required", "deposit_required", 3)]
    offices = [d["score"] for e in in_a_set for t, _, d in e if t == "office.score_changed"]
    assert offices == [100 - 50 * k for k in range(1, 2 * n + 1)]  # one office, charged twice per mix
    scores = [d["score"] for e in in_a_set[:9] for t, _, d in e if t == "score.changed"]
    assert scores == [50, 0, -50]
    holds = [(d["starts_at"], d["ends_at"]) for e in in_a_set[:9] for t, _, d in e if t == "hold.placed"]
    assert holds == [
        ("2026-03-02T09:00:00Z", "2026-03-09T09:00:00Z"),
        ("2026-03-09T09:00:00Z", "2026-03-16T09:00:00Z"),  # stacked behind the first of the set
        ("2026-03-16T09:00:00Z", "2026-03-23T09:00:00Z"),
    ]


async def test_the_cases_of_one_patient_in_one_set_move_the_standing_as_one_after_the_other(
    handle: Handle, unit_for: Callable[..., Unit[Any]]
) -> None:
    repo = CountingRepository(FakeAccountabilityRepository())
    practice_id = await practice_with_standing(handle, repo, forgive_first=False, window_days=30)
    patient_id = unique("pat")
    # Different bookings (different Kafka keys), so one wave may hold them all; out of time order.
    events = [no_show(practice_id, patient_id, at=T0 + n * D) for n in (2, 0, 1, 3)]
    repo.calls.clear()

    emitted = await as_a_set(unit_for, accountability.on_no_show, events, repo)

    assert [[(d["standing"], d["previous"], d["count"]) for _, _, d in e] for e in emitted] == [
        [],  # only its own case counts: one
        [],  # decided at its own time: the first record's later case does not count yet
        [("deposit_required", "good", 2)],  # its own and the one of the day before
        [("online_booking_blocked", "deposit_required", 4)],  # all four
    ]
    assert all(key == patient_id for e in emitted for _, key, _ in e)
    row = repo.repo.standings[(practice_id, patient_id)]
    assert (row["standing"], row["count"]) == ("online_booking_blocked", 4)
    assert row["changed_at"] == T0 + 3 * D + timedelta(minutes=20)  # the last move's time
    assert row["next_review_at"] == T0 + timedelta(minutes=20) + 30 * D  # the oldest case ages out first
    assert max(repo.calls.values()) == 1


async def test_one_refused_record_fails_its_set_before_anything_is_stored(
    handle: Handle, unit_for: Callable[..., Unit[Any]]
) -> None:
    repo = FakeAccountabilityRepository()
    practice_id = await practice_with_standing(handle, repo)
    refused = cancelled(practice_id, unique("pat"), at=T0, actor="professional", professional_id="pro-1")
    events = [no_show(practice_id, unique("pat"), at=T0), no_show(practice_id, unique("pat"), at=T0)]
    with pytest.raises(domain.DecisionWithoutPenalty):
        await as_a_set(unit_for, accountability.on_cancelled, [cancelled(practice_id, "p", at=T0), refused], repo)
    with pytest.raises(ValueError, match="names no professional_id"):
        nobody = events[1].model_copy(update={"party": "professional", "professional_id": None})
        await as_a_set(unit_for, accountability.on_no_show, [events[0], nobody], repo)
    assert (repo.cases, repo.standings, repo.professionals, repo.ledger) == ({}, {}, {}, {})


async def test_completions_of_one_professional_in_one_set_announce_the_score_after_each(
    handle: Handle, unit_for: Callable[..., Unit[Any]]
) -> None:
    repo, professional_id = CountingRepository(FakeAccountabilityRepository()), unique("pro")
    done = [
        BookingCompleted.new(booking_id=unique("bk"), completed_at=T0 + n * D, professional_id=professional_id)
        for n in range(3)
    ]
    await handle(handlers.score_completion, done[0], repo)  # handled before: the set replays it
    repo.calls.clear()
    nobody = BookingCompleted.new(booking_id=unique("bk"), completed_at=T0, professional_id=None)

    emitted = await as_a_set(unit_for, handlers.score_completion, [done[1], nobody, done[0], done[2]], repo)

    assert [[(t, k, d["score"]) for t, k, d in e] for e in emitted] == [
        [("score.changed", professional_id, 120)],
        [],
        [],  # the replay
        [("score.changed", professional_id, 130)],
    ]
    assert repo.calls == Counter({"lock_professionals": 1, "add_ledger_entries": 1, "ledger_totals": 1})

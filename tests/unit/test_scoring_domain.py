"""Table tests of the professional reliability rules (docs/rules.md#professional-reliability-score-and-holds): score arithmetic, penalties, hold stacking, excuses, recalculation, suspension and
the nightly schedule. Pure: no I/O."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from scoring.domain import (
    BASE_SCORE,
    COMPLETION_DELTA,
    REJECTED_BY_REVIEWER,
    UNKNOWN_BOOKING,
    UNKNOWN_EXCUSE,
    UNKNOWN_PROFESSIONAL,
    Compensation,
    DecisionWithoutPenalty,
    Entry,
    Hold,
    Penalty,
    assess_submission,
    compensations,
    hold_id,
    ledger_entry_id,
    next_hold_window,
    nightly_run_due,
    penalty,
    review_outcome,
    reviewer_rejection,
    score,
    suspension_holds,
    unknown_excuse,
    until_next_run,
)

T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def hold(
    name: str,
    *,
    occurred: timedelta = timedelta(0),
    starts: timedelta = timedelta(0),
    days: int = 7,
    status: str = "running",
    lift_cause: str | None = None,
    excused: bool = False,
) -> Hold:
    return Hold(
        hold_id=name,
        status=status,  # type: ignore[arg-type]
        occurred_at=T0 + occurred,
        starts_at=T0 + starts,
        ends_at=T0 + starts + days * DAY,
        lift_cause=lift_cause,
        excused_at=T0 + occurred + DAY if excused else None,
    )


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        ([], 100),
        ([COMPLETION_DELTA], 110),
        ([-10], 90),
        ([-50, 10, 10], 70),
        ([-100, -100], -100),  # nothing is clamped, downwards
        ([10] * 20, 300),  # nor upwards
        ([-100, 100], 100),  # a compensating entry (excuse, recalculation) takes a penalty out
    ],
)
def test_score_is_the_base_plus_the_ledger_unclamped(deltas: list[int], expected: int) -> None:
    assert BASE_SCORE == 100
    assert score(deltas) == expected


@pytest.mark.parametrize(
    ("classification", "score_delta", "hold_days", "expected"),
    [
        # the decision's numbers (what the policy publishes)
        ("timely", -10, None, Penalty(-10, "cancelled", None, None)),
        ("late", -50, 7, Penalty(-50, "late_cancelled", 7, "late_cancellation")),
        ("no_show", -100, 14, Penalty(-100, "no_show", 14, "no_show")),
        # a policy that decides other numbers is followed: scoring keeps no table of its own
        ("late", -30, 3, Penalty(-30, "late_cancelled", 3, "late_cancellation")),
        ("late", -50, 0, Penalty(-50, "late_cancelled", None, None)),
        ("late", -50, None, Penalty(-50, "late_cancelled", None, None)),
        ("no_show", -70, None, Penalty(-70, "no_show", None, None)),
        ("timely", -10, 2, Penalty(-10, "cancelled", 2, "late_cancellation")),
        ("timely", 0, None, Penalty(0, "cancelled", None, None)),
    ],
)
def test_penalty_is_the_policys(
    classification: str, score_delta: int, hold_days: int | None, expected: Penalty
) -> None:
    assert penalty(classification, score_delta, hold_days) == expected


@pytest.mark.parametrize("classification", ["timely", "late", "no_show"])
@pytest.mark.parametrize("hold_days", [None, 7])
def test_a_decision_without_its_penalty_is_refused_not_guessed(classification: str, hold_days: int | None) -> None:
    # The policy decides every professional penalty; a decision without one breaks the contract
    # and is dead-lettered (a ValueError the consumer never retries).
    with pytest.raises(DecisionWithoutPenalty, match="score_delta"):
        penalty(classification, None, hold_days)
    assert issubclass(DecisionWithoutPenalty, ValueError)


@pytest.mark.parametrize(("classification", "days"), [("sometimes", None), ("late", -1)])
def test_penalty_refuses_what_no_rule_names(classification: str, days: int | None) -> None:
    with pytest.raises(ValueError):
        penalty(classification, -50, days)


@pytest.mark.parametrize(
    ("holds", "at", "days", "expected_start"),
    [
        # none runs: the hold starts at the event's own time
        ([], T0, 7, T0),
        # one running: the new hold starts when it ends
        ([hold("a", days=7)], T0 + DAY, 14, T0 + 7 * DAY),
        # a chain: it starts when the latest running hold ends, not the first
        ([hold("a", days=7), hold("b", starts=7 * DAY, days=14)], T0 + 2 * DAY, 7, T0 + 21 * DAY),
        # order of the list does not matter
        ([hold("b", starts=7 * DAY, days=14), hold("a", days=7)], T0 + 2 * DAY, 7, T0 + 21 * DAY),
        # a hold past its end is over, even before the expiry job marks it lifted
        ([hold("a", days=7)], T0 + 7 * DAY, 7, T0 + 7 * DAY),
        ([hold("a", days=7)], T0 + 30 * DAY, 7, T0 + 30 * DAY),
        # an expired hold ran its course: a late event caused while it ran stacks behind it just
        # the same, whether or not the expiry job has lifted it yet (replays decide the same)
        ([hold("a", days=14, status="lifted", lift_cause="expired"), hold("b", days=3)], T0 + DAY, 7, T0 + 14 * DAY),
        ([hold("a", days=7, status="lifted", lift_cause="expired")], T0 + 8 * DAY, 7, T0 + 8 * DAY),
        # an excused hold holds nothing: lifted by its excuse, or excused after it expired
        ([hold("a", days=14, status="lifted", lift_cause="excused", excused=True)], T0 + DAY, 7, T0 + DAY),
        ([hold("a", days=14, status="lifted", lift_cause="expired", excused=True)], T0 + DAY, 7, T0 + DAY),
        (
            [
                hold("a", days=7),
                hold("b", starts=7 * DAY, days=14, status="lifted", lift_cause="excused", excused=True),
            ],
            T0 + 2 * DAY,
            7,
            T0 + 7 * DAY,
        ),
    ],
)
def test_holds_stack(holds: list[Hold], at: datetime, days: int, expected_start: datetime) -> None:
    starts_at, ends_at = next_hold_window(holds, at, days)
    assert starts_at == expected_start
    assert ends_at == expected_start + days * DAY


def test_a_hold_lasts_at_least_a_day() -> None:
    with pytest.raises(ValueError):
        next_hold_window([], T0, 0)


@pytest.mark.parametrize(
    ("holds", "expected"),
    [
        ([], None),
        ([hold("a"), hold("b", occurred=DAY)], None),
        ([hold("a"), hold("b", occurred=DAY), hold("c", occurred=2 * DAY)], ["a", "b", "c"]),
        # the window is 365 days inclusive
        ([hold("a"), hold("b", occurred=100 * DAY), hold("c", occurred=365 * DAY)], ["a", "b", "c"]),
        ([hold("a"), hold("b", occurred=100 * DAY), hold("c", occurred=366 * DAY)], None),
        # a later window counts too
        (
            [hold("a"), hold("b", occurred=200 * DAY), hold("c", occurred=400 * DAY), hold("d", occurred=500 * DAY)],
            ["b", "c", "d"],
        ),
        # excused holds never count; expired ones do
        (
            [hold("a"), hold("b", occurred=DAY, status="lifted", lift_cause="excused"), hold("c", occurred=2 * DAY)],
            None,
        ),
        # ... also a hold excused after it had expired (it stays lifted as expired)
        (
            [
                hold("a", status="lifted", lift_cause="expired", excused=True),
                hold("b", occurred=DAY),
                hold("c", occurred=2 * DAY),
            ],
            None,
        ),
        # a fourth hold after an excused one suspends again: three unexcused within the window
        (
            [
                hold("a"),
                hold("b", occurred=DAY, status="lifted", lift_cause="excused", excused=True),
                hold("c", occurred=2 * DAY),
                hold("d", occurred=3 * DAY),
            ],
            ["a", "c", "d"],
        ),
        (
            [hold("a", status="lifted", lift_cause="expired"), hold("b", occurred=DAY), hold("c", occurred=2 * DAY)],
            ["a", "b", "c"],
        ),
        # every unexcused hold of the window is listed, oldest first, whatever the input order
        (
            [hold("d", occurred=3 * DAY), hold("b", occurred=DAY), hold("a"), hold("c", occurred=2 * DAY)],
            ["a", "b", "c", "d"],
        ),
    ],
)
def test_three_unexcused_holds_within_365_days_suspend(holds: list[Hold], expected: list[str] | None) -> None:
    assert suspension_holds(holds) == expected


def test_suspension_threshold_and_window_are_settings() -> None:
    holds = [hold("a"), hold("b", occurred=10 * DAY)]
    assert suspension_holds(holds, threshold=2) == ["a", "b"]
    assert suspension_holds(holds, threshold=2, window=timedelta(days=9)) is None


def test_ids_are_derived_from_their_cause() -> None:
    assert ledger_entry_id("pro-1", "b-1", "late_cancelled") == ledger_entry_id("pro-1", "b-1", "late_cancelled")
    assert ledger_entry_id("pro-1", "b-1", "late_cancelled") != ledger_entry_id("pro-1", "b-1", "completed")
    assert ledger_entry_id("pro-1", "b-1", "completed") != ledger_entry_id("pro-2", "b-1", "completed")
    assert hold_id("pro-1", "b-1") == hold_id("pro-1", "b-1") != hold_id("pro-1", "b-2")


# --- excuses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("professional_known", "penalised", "reason"),
    [
        (True, True, None),  # a penalty to excuse: it waits for its review
        (True, False, UNKNOWN_BOOKING),  # known professional, no penalty for that booking
        (False, False, UNKNOWN_PROFESSIONAL),  # scoring never heard of the professional
    ],
)
def test_an_excuse_needs_a_recorded_penalty(professional_known: bool, penalised: bool, reason: str | None) -> None:
    refusal = assess_submission("pro-1", "b-1", professional_known=professional_known, penalised=penalised)
    assert (refusal.reason if refusal else None) == reason
    if refusal:
        assert "b-1" in refusal.message or "pro-1" in refusal.message


@pytest.mark.parametrize(
    ("status", "decision", "outcome"),
    [
        ("pending", "approved", "approve"),
        ("pending", "rejected", "reject"),
        (None, "approved", "unknown"),  # never submitted: recorded as rejected with the reason
        (None, "rejected", "unknown"),
        # the first decision stands
        ("approved", "rejected", "already_decided"),
        ("approved", "approved", "already_decided"),
        ("rejected", "approved", "already_decided"),  # e.g. refused by scoring for an unknown booking
    ],
)
def test_review_outcome(status: str | None, decision: str, outcome: str) -> None:
    assert review_outcome(status, decision) == outcome


def test_refusals_name_their_reason() -> None:
    assert unknown_excuse("ex-1").reason == UNKNOWN_EXCUSE and "ex-1" in unknown_excuse("ex-1").message
    assert reviewer_rejection("rev-1").reason == REJECTED_BY_REVIEWER


# --- recalculation -----------------------------------------------------------------------------


def e(booking: str | None, delta: int, cause: str) -> Entry:
    return Entry(booking_id=booking, delta=delta, cause=cause)


@pytest.mark.parametrize(
    ("entries", "excused", "expected"),
    [
        # nothing excused: nothing moves
        ([e("b1", -50, "late_cancelled")], [], []),
        # an approved excuse takes its booking's penalty out
        ([e("b1", -50, "late_cancelled")], ["b1"], [Compensation("b1", 50)]),
        ([e("b1", -100, "no_show")], ["b1"], [Compensation("b1", 100)]),
        ([e("b1", -10, "cancelled")], ["b1"], [Compensation("b1", 10)]),
        # ... once: a second run finds the compensating entry and adds nothing
        ([e("b1", -50, "late_cancelled"), e("b1", 50, "excused")], ["b1"], []),
        # only the excused booking; other penalties and completions stay
        (
            [e("b1", -50, "late_cancelled"), e("b2", -100, "no_show"), e("b3", 10, "completed")],
            ["b2"],
            [Compensation("b2", 100)],
        ),
        # a completion is not a penalty: nothing to take out
        ([e("b3", 10, "completed")], ["b3"], []),
        # two excuses for one booking compensate it once; order of approval is kept
        (
            [e("b1", -50, "late_cancelled"), e("b2", -100, "no_show")],
            ["b2", "b1", "b2"],
            [Compensation("b2", 100), Compensation("b1", 50)],
        ),
        # an excuse whose booking has no penalty in this ledger (another professional's) moves nothing
        ([e("b1", -50, "late_cancelled")], ["b9"], []),
        # a policy that decided a zero penalty: nothing to take out
        ([e("b1", 0, "late_cancelled")], ["b1"], []),
    ],
)
def test_recalculation_compensates_approved_excuses(
    entries: list[Entry], excused: list[str], expected: list[Compensation]
) -> None:
    assert compensations(entries, excused) == expected


def test_recalculation_is_idempotent_and_restores_the_score() -> None:
    ledger = [e("b1", -50, "late_cancelled"), e("b2", 10, "completed"), e("b3", -100, "no_show")]
    first = compensations(ledger, ["b1", "b3"])
    after = ledger + [e(c.booking_id, c.delta, "excused") for c in first]
    assert score(x.delta for x in ledger) == -40
    assert score(x.delta for x in after) == 110  # as if only the completion had happened
    assert compensations(after, ["b1", "b3"]) == []


# --- the nightly schedule ----------------------------------------------------------------------

NIGHT = datetime(2026, 11, 21, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "hour", "last_run", "due"),
    [
        (NIGHT + timedelta(hours=2, minutes=59), 3, None, None),  # before the hour
        (NIGHT + timedelta(hours=3), 3, None, date(2026, 11, 21)),  # at the hour
        (NIGHT + timedelta(hours=17), 3, None, date(2026, 11, 21)),  # a replica starting later catches up
        (NIGHT + timedelta(hours=17), 3, date(2026, 11, 21), None),  # once per date
        (NIGHT + timedelta(hours=3), 3, date(2026, 11, 20), date(2026, 11, 21)),  # yesterday's ran
        (NIGHT, 0, date(2026, 11, 20), date(2026, 11, 21)),
        (NIGHT + timedelta(hours=22, minutes=59), 23, None, None),
    ],
)
def test_nightly_run_due(now: datetime, hour: int, last_run: date | None, due: date | None) -> None:
    assert nightly_run_due(now, hour, last_run) == due


@pytest.mark.parametrize(
    ("now", "hour", "wait"),
    [
        (NIGHT + timedelta(hours=1), 3, timedelta(hours=2)),
        (NIGHT + timedelta(hours=3), 3, timedelta(days=1)),  # the run at the hour just happened
        (NIGHT + timedelta(hours=4), 3, timedelta(hours=23)),
    ],
)
def test_until_next_run(now: datetime, hour: int, wait: timedelta) -> None:
    assert until_next_run(now, hour) == wait


def test_the_recalculation_hour_is_a_utc_hour() -> None:
    with pytest.raises(ValueError):
        nightly_run_due(NIGHT, 24, None)

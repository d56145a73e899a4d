"""Table tests of the professional reliability rules (RULES.md "Professional reliability score
and holds"): score arithmetic, penalties, hold stacking and suspension. Pure: no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from scoring.domain import (
    BASE_SCORE,
    COMPLETION_DELTA,
    Hold,
    Penalty,
    hold_id,
    ledger_entry_id,
    next_hold_window,
    penalty,
    score,
    suspension_holds,
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
) -> Hold:
    return Hold(
        hold_id=name,
        status=status,  # type: ignore[arg-type]
        occurred_at=T0 + occurred,
        starts_at=T0 + starts,
        ends_at=T0 + starts + days * DAY,
        lift_cause=lift_cause,
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
        # a policy that decides other numbers is followed
        ("late", -30, 3, Penalty(-30, "late_cancelled", 3, "late_cancellation")),
        ("late", -50, 0, Penalty(-50, "late_cancelled", None, None)),
        ("timely", -10, 2, Penalty(-10, "cancelled", 2, "late_cancellation")),
        # a decision without numbers falls back to the RULES.md table
        ("timely", None, None, Penalty(-10, "cancelled", None, None)),
        ("late", None, None, Penalty(-50, "late_cancelled", 7, "late_cancellation")),
        ("no_show", None, None, Penalty(-100, "no_show", 14, "no_show")),
    ],
)
def test_penalty(classification: str, score_delta: int | None, hold_days: int | None, expected: Penalty) -> None:
    assert penalty(classification, score_delta, hold_days) == expected


@pytest.mark.parametrize(("classification", "days"), [("sometimes", None), ("late", -1)])
def test_penalty_refuses_what_no_rule_names(classification: str, days: int | None) -> None:
    with pytest.raises(ValueError):
        penalty(classification, -50 if days else None, days)


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
        # a lifted hold (excused or expired) holds nothing
        ([hold("a", days=14, status="lifted", lift_cause="excused")], T0 + DAY, 7, T0 + DAY),
        ([hold("a", days=14, status="lifted", lift_cause="expired"), hold("b", days=3)], T0 + DAY, 7, T0 + 3 * DAY),
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

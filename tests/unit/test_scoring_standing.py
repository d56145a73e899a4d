"""Table tests of the second release's scoring rules (docs/rules.md#patient-standing,
#offices-in-a-marketplace, #reinstatement): the standing window's edges, forgiveness, the
thresholds, moving back down, what counts as a patient's case, office scores, and holds cleared
by a reinstatement. Pure: no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from scoring.domain import (
    OFFICE_BASE_SCORE,
    Hold,
    StandingRules,
    case_id,
    counts_towards_standing,
    office_entry_id,
    office_score,
    patient_standing,
    standing_reason,
    suspension_holds,
)

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
D = timedelta(days=1)
RULES = StandingRules(enabled=True)  # 365 days, first forgiven, 2 / 3 / 4
STRICT = StandingRules(enabled=True, forgive_first=False)


def times(*days_ago: float, at: datetime) -> list[datetime]:
    return [at - d * D for d in days_ago]


@pytest.mark.parametrize(
    ("cases", "rules", "standing", "count"),
    [
        (0, RULES, "good", 0),
        (1, RULES, "good", 0),  # the first is forgiven
        (2, RULES, "good", 1),
        (3, RULES, "deposit_required", 2),  # 2 counted: the deposit threshold
        (4, RULES, "prepayment_required", 3),
        (5, RULES, "online_booking_blocked", 4),
        (9, RULES, "online_booking_blocked", 8),
        (1, STRICT, "good", 1),  # nothing forgiven
        (2, STRICT, "deposit_required", 2),
        (3, STRICT, "prepayment_required", 3),
        (4, STRICT, "online_booking_blocked", 4),
        (
            2,
            StandingRules(
                enabled=True,
                forgive_first=False,
                deposit_required_after=1,
                prepayment_required_after=1,
                online_booking_blocked_after=2,
            ),
            "online_booking_blocked",
            2,
        ),
    ],
)
def test_thresholds_and_forgiveness(cases, rules, standing, count):
    at = T0 + 400 * D
    now = patient_standing(times(*range(cases), at=at), at, rules)
    assert (now.standing, now.count, now.in_window) == (standing, count, cases)


@pytest.mark.parametrize(
    ("age", "counts"),
    [
        (timedelta(0), True),  # a case at the time of evaluation counts
        (365 * D - timedelta(seconds=1), True),  # the last second inside the window
        (365 * D, False),  # exactly window_days old: aged out
        (366 * D, False),
        (-timedelta(seconds=1), False),  # after the time of evaluation: not yet
    ],
)
def test_the_windows_edges(age, counts):
    at = T0 + 400 * D
    now = patient_standing([at - age], at, STRICT)
    assert now.in_window == (1 if counts else 0)


def test_a_shorter_window_counts_fewer_cases():
    at = T0 + 400 * D
    rules = StandingRules(enabled=True, window_days=30, forgive_first=False)
    now = patient_standing(times(1, 10, 29, 30, 31, 200, at=at), at, rules)
    assert (now.in_window, now.count, now.standing) == (3, 3, "prepayment_required")


def test_standing_moves_back_down_as_cases_age_out_and_says_when():
    first = T0
    cases = [first, first + 10 * D, first + 20 * D]  # three cases: deposit required (2 counted)
    at = first + 20 * D
    now = patient_standing(cases, at, RULES)
    assert now.standing == "deposit_required"
    assert now.next_review_at == first + 365 * D  # when the oldest ages out

    later = patient_standing(cases, now.next_review_at, RULES)
    assert (later.standing, later.count, later.next_review_at) == ("good", 1, first + 10 * D + 365 * D)
    gone = patient_standing(cases, first + 20 * D + 365 * D, RULES)
    assert (gone.standing, gone.count, gone.next_review_at) == ("good", 0, None)


def test_the_reason_reads_like_a_sentence_and_says_the_direction():
    at = T0 + 400 * D
    up = patient_standing(times(1, 2, 3, at=at), at, RULES)
    reason = standing_reason(up, "good", RULES)
    assert reason.startswith("3 no-shows or late cancellations at this practice in the last 365 days (the first")
    assert "2 counted: moved up to a deposit is required" in reason
    down = patient_standing(times(1, 2, at=at), at, RULES)
    assert "moved back down to good standing" in standing_reason(down, "deposit_required", RULES)
    one = patient_standing(times(1, at=at), at, STRICT)
    assert standing_reason(one, "good", STRICT).startswith("1 no-show or late cancellation at this practice")


@pytest.mark.parametrize(
    ("actor", "classification", "waived", "kind"),
    [
        ("patient", "late", None, "late_cancellation"),
        ("staff", "late", None, "late_cancellation"),  # staff cancelling for the patient
        ("patient", "timely", None, None),
        ("staff", "timely", None, None),
        ("staff", "late", True, None),  # waived: does not count
        ("professional", "late", None, None),  # the professional's, never the patient's
        ("professional", "no_show", None, None),
        ("system", "timely", None, None),
    ],
)
def test_what_counts_as_a_patients_case(actor, classification, waived, kind):
    assert counts_towards_standing(actor, classification, waived) == kind


def test_ids_are_derived_from_what_caused_them():
    assert case_id("bk-1", "no_show") == case_id("bk-1", "no_show") != case_id("bk-1", "late_cancellation")
    assert office_entry_id("p-1", "bk-1") == office_entry_id("p-1", "bk-1") != office_entry_id("p-2", "bk-1")


def test_offices_start_at_100_and_sum_their_ledger():
    assert OFFICE_BASE_SCORE == 100
    assert office_score([]) == 100 and office_score([-10, -50]) == 40 and office_score([-50, -50, -50]) == -50


def hold(n: int, *, cleared: bool = False) -> Hold:
    at = T0 + n * D
    return Hold(
        hold_id=f"h{n}",
        status="lifted",
        occurred_at=at,
        starts_at=at,
        ends_at=at + 7 * D,
        lift_cause="expired",
        cleared_at=T0 + 100 * D if cleared else None,
    )


@pytest.mark.parametrize(
    ("holds", "suspends"),
    [
        ([hold(1), hold(2), hold(3)], ["h1", "h2", "h3"]),
        # reinstated after h1..h3: they no longer count, a fourth alone suspends nothing
        ([hold(1, cleared=True), hold(2, cleared=True), hold(3, cleared=True), hold(200)], None),
        # three new holds after the reinstatement suspend again
        (
            [hold(1, cleared=True), hold(2, cleared=True), hold(3, cleared=True), hold(200), hold(201), hold(202)],
            ["h200", "h201", "h202"],
        ),
    ],
)
def test_holds_cleared_by_a_reinstatement_no_longer_count(holds, suspends):
    assert suspension_holds(holds) == suspends

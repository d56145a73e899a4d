"""Table tests of the cancellation policy (docs/rules.md), one row per rule and boundary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from booking.domain import Rejection, check_request
from cancellation_policy.domain import assess, classify
from shared.contracts.booking import BookingSnapshot, CancellationAssessmentRequested
from shared.contracts.common import Actor, Fee
from shared.contracts.upstream import (
    REASON_TEXT_TOO_LONG,
    CancellationSettings,
    DepositSettings,
    FeeSettings,
    PracticeSettings,
)

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LATE_FEE = Fee(amount="45.00", currency="AUD", code="D9987", code_system="CDT")
NO_SHOW_FEE = Fee(amount="60.00", currency="AUD", code="D9986", code_system="CDT")
FEES = PracticeSettings(fees=FeeSettings(late_cancellation=LATE_FEE, no_show=NO_SHOW_FEE, charge_card_on_file=True))
DEFAULTS = PracticeSettings()

PATIENT = Actor(kind="patient", id="pat-1")
STAFF = Actor(kind="staff", id="staff-1", roles=["reception"])
PRO = Actor(kind="professional", id="pro-1")
OTHER_PRO = Actor(kind="professional", id="pro-2")
SYSTEM = Actor(kind="system", id="scoring")
CHANNEL = {"patient": "patient_portal", "staff": "practice", "professional": "professional_app", "system": "system"}


def request(
    actor: Actor,
    lead: timedelta,
    *,
    kind: str = "cancellation",
    portal: bool = True,
    card: bool = True,
    deposit: bool = False,
    fee_decision: str = "policy",
    deposit_decision: str = "policy",
    party: str | None = None,
    reason_text: str | None = None,
    professional_id: str | None = "pro-1",
) -> CancellationAssessmentRequested:
    return CancellationAssessmentRequested.new(
        booking_id="b-1",
        request_id="r-1",
        practice_id="p-1",
        kind=kind,
        booking=BookingSnapshot.new(
            starts_at=START,
            ends_at=START + timedelta(minutes=30),
            status="scheduled",
            professional_id=professional_id,
            patient_portal_account=portal,
            patient_card_on_file=card,
            deposit={"amount": "20.00", "currency": "AUD"} if deposit else None,
        ),
        requested_at=START - lead,
        actor=actor,
        channel=CHANNEL[actor.kind] if kind == "cancellation" else None,
        fee_decision=fee_decision,
        deposit_decision=deposit_decision,
        party=party,
        code="FTA" if kind == "no_show" else None,
        reason_text=reason_text,
    )


H = timedelta(hours=1)
M = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("actor", "lead", "kwargs", "settings", "reason"),
    [
        (PATIENT, 72 * H, {"portal": False}, DEFAULTS, "no_portal_account"),
        (
            PATIENT,
            72 * H,
            {},
            PracticeSettings(cancellation=CancellationSettings(online_enabled=False)),
            "online_cancellation_disabled",
        ),
        (PATIENT, 0 * H, {}, DEFAULTS, "appointment_started"),
        (PATIENT, -1 * M, {}, DEFAULTS, "appointment_started"),
        (PATIENT, 48 * H - 1 * M, {}, DEFAULTS, "within_online_cutoff"),
        (PATIENT, 30 * H, {}, DEFAULTS, "within_online_cutoff"),
        (STAFF, 0 * H, {}, DEFAULTS, "appointment_started"),
        (STAFF, -2 * H, {}, DEFAULTS, "appointment_started"),
        (OTHER_PRO, 72 * H, {}, DEFAULTS, "not_allowed"),
        (PRO, 72 * H, {"professional_id": None}, DEFAULTS, "not_allowed"),
        (PRO, 0 * H, {}, DEFAULTS, "appointment_started"),
        (SYSTEM, 0 * H, {}, DEFAULTS, "appointment_started"),
        (PATIENT, 72 * H, {"fee_decision": "waive"}, DEFAULTS, "not_allowed"),
        (PATIENT, 72 * H, {"deposit_decision": "keep", "deposit": True}, DEFAULTS, "not_allowed"),
        (PRO, 72 * H, {"deposit_decision": "keep", "deposit": True}, DEFAULTS, "not_allowed"),
        (STAFF, 72 * H, {"reason_text": "x" * 256}, DEFAULTS, "invalid_request"),
    ],
)
def test_rejections(actor, lead, kwargs, settings, reason):
    result = assess(request(actor, lead, **kwargs), settings)
    assert not result.allowed
    assert result.rejection_reason == reason
    assert result.explanation.endswith(".")


def test_within_cutoff_message_names_the_practices_cutoff():
    settings = PracticeSettings(cancellation=CancellationSettings(patient_cutoff_hours=72))
    result = assess(request(PATIENT, 50 * H), settings)
    assert result.rejection_reason == "within_online_cutoff"
    assert "contact the practice" in result.explanation and "72 hours" in result.explanation


def test_reason_text_of_exactly_255_characters_is_accepted():
    assert assess(request(STAFF, 72 * H, reason_text="x" * 255), DEFAULTS).allowed


def test_a_reason_too_long_gets_the_one_sentence_booking_gives_too():
    # One sentence, kept once beside the limit: booking and the policy answer alike.
    result = assess(request(STAFF, 72 * H, reason_text="x" * 256), DEFAULTS)
    assert result.explanation == REASON_TEXT_TOO_LONG
    assert check_request("scheduled", "x" * 256) == Rejection("invalid_request", REASON_TEXT_TOO_LONG)
    assert "255 characters" in REASON_TEXT_TOO_LONG


@pytest.mark.parametrize(
    ("actor", "lead", "classification"),
    [
        (PATIENT, 48 * H, "timely"),  # exactly the patient cutoff is allowed
        (STAFF, 24 * H, "timely"),  # exactly the late window: timely
        (STAFF, 24 * H - 1 * M, "late"),
        (STAFF, 60 * M, "late"),  # patients and staff are never no_show by cancelling
        (STAFF, 1 * M, "late"),
        (PRO, 24 * H, "timely"),
        (PRO, 24 * H - 1 * M, "late"),
        (PRO, 61 * M, "late"),
        (PRO, 60 * M, "no_show"),  # exactly the no-show threshold
        (PRO, 1 * M, "no_show"),
    ],
)
def test_classification_boundaries(actor, lead, classification):
    result = assess(request(actor, lead), DEFAULTS)
    assert result.allowed
    assert result.classification == classification
    assert classify(lead, actor.kind, DEFAULTS) == classification


@pytest.mark.parametrize(
    ("lead", "delta", "hold"),
    [(72 * H, -10, None), (23 * H, -50, 7), (30 * M, -100, 14)],
)
def test_professional_penalties(lead, delta, hold):
    result = assess(request(PRO, lead, deposit=True), FEES)
    assert (result.score_delta, result.hold_days) == (delta, hold)
    assert result.fee is None and result.charge_card is False  # the patient pays nothing
    assert result.deposit_action == "refund"


@pytest.mark.parametrize(
    ("lead", "fee_decision", "fee", "deposit"),
    [
        (72 * H, "policy", None, "refund"),
        (10 * H, "policy", LATE_FEE, "keep"),
        (72 * H, "charge", LATE_FEE, "refund"),  # staff charge even though the policy would not
        (10 * H, "waive", None, "refund"),  # waived fee: deposit refunded
    ],
)
def test_staff_fee_decisions_and_deposits(lead, fee_decision, fee, deposit):
    result = assess(request(STAFF, lead, deposit=True, fee_decision=fee_decision), FEES)
    assert result.allowed
    assert result.fee == fee
    assert result.charge_card is (fee is not None)
    assert result.deposit_action == deposit


@pytest.mark.parametrize(
    ("lead", "fee_decision", "deposit_decision", "deposit"),
    [
        (72 * H, "policy", "keep", "keep"),  # timely would refund: staff keep it
        (10 * H, "policy", "refund", "refund"),  # late would keep: staff refund it
        (10 * H, "waive", "credit_note", "credit_note"),  # wins over "waived fee: refund" too
        (10 * H, "policy", "policy", "keep"),  # the policy's rule
    ],
)
def test_staff_deposit_decision_wins_over_the_policy(lead, fee_decision, deposit_decision, deposit):
    result = assess(
        request(STAFF, lead, deposit=True, fee_decision=fee_decision, deposit_decision=deposit_decision), FEES
    )
    assert result.allowed and result.deposit_action == deposit


def test_a_deposit_decision_without_a_deposit_does_nothing():
    assert assess(request(STAFF, 10 * H, deposit_decision="refund"), FEES).deposit_action == "none"


@pytest.mark.parametrize(
    ("review_hours", "lead", "expected"), [(0, 10 * H, None), (48, 10 * H, 48), (48, 72 * H, None)]
)
def test_the_decision_carries_the_review_window_of_a_fee(review_hours, lead, expected):
    settings = PracticeSettings(
        fees=FeeSettings(late_cancellation=LATE_FEE, charge_card_on_file=True, review_hours=review_hours)
    )
    assert assess(request(STAFF, lead), settings).review_hours == expected  # no fee (timely): nothing to review


def test_fee_is_an_outstanding_charge_without_a_card_on_file():
    result = assess(request(STAFF, 10 * H, card=False), FEES)
    assert result.fee == LATE_FEE and result.charge_card is False


def test_fee_is_an_outstanding_charge_when_the_practice_does_not_charge_cards():
    settings = PracticeSettings(fees=FeeSettings(late_cancellation=LATE_FEE, charge_card_on_file=False))
    assert assess(request(STAFF, 10 * H), settings).charge_card is False


def test_no_fee_configured_means_no_fee_even_when_late():
    result = assess(request(STAFF, 10 * H, deposit=True), DEFAULTS)
    assert result.fee is None and result.deposit_action == "keep"


def test_deposit_settable_to_credit_note():
    settings = PracticeSettings(deposits=DepositSettings(late="credit_note"))
    assert assess(request(STAFF, 10 * H, deposit=True), settings).deposit_action == "credit_note"


def test_no_deposit_means_no_deposit_action():
    assert assess(request(STAFF, 10 * H), FEES).deposit_action == "none"


def test_system_cancels_future_bookings_without_penalty():
    result = assess(request(SYSTEM, 30 * M, deposit=True), FEES)
    assert result.allowed and result.fee is None and result.score_delta is None
    assert result.deposit_action == "refund"


@pytest.mark.parametrize(
    ("lead", "party", "fee_decision", "allowed", "fee", "deposit", "delta"),
    [
        (1 * M, "patient", "policy", False, None, None, None),  # before the start
        (0 * M, "patient", "policy", True, NO_SHOW_FEE, "keep", None),  # exactly at the start
        (-30 * M, "patient", "waive", True, None, "refund", None),
        (-30 * M, "professional", "policy", True, None, "refund", -100),
    ],
)
def test_no_shows(lead, party, fee_decision, allowed, fee, deposit, delta):
    result = assess(request(STAFF, lead, kind="no_show", party=party, deposit=True, fee_decision=fee_decision), FEES)
    assert result.allowed is allowed
    if not allowed:
        assert result.rejection_reason == "appointment_not_started"
        return
    assert result.classification == "no_show"
    assert (result.fee, result.deposit_action, result.score_delta) == (fee, deposit, delta)


def test_patients_cannot_report_no_shows():
    result = assess(request(PATIENT, -5 * M, kind="no_show", party="professional"), DEFAULTS)
    assert result.rejection_reason == "not_allowed"


def test_explanation_says_which_window_and_fee_applied():
    result = assess(request(STAFF, 10 * H, deposit=True), FEES)
    assert "late window 24 h" in result.explanation
    assert "45.00 AUD" in result.explanation and "D9987" in result.explanation
    assert "deposit kept" in result.explanation


# --- second release (issue 17): fee tiers, office accountability, frozen settings --------------

from decimal import Decimal  # noqa: E402

from cancellation_policy.domain import (  # noqa: E402
    SettingsVersion,
    late_fee,
    office_accountability,
    round_money,
    settings_for_booking,
)
from shared.contracts.base import Money  # noqa: E402
from shared.contracts.upstream import LateCancellationTier, TurnawaySettings  # noqa: E402

PRICE = Money(amount="180.00", currency="AUD")
TIERS = FeeSettings(
    late_cancellation=LATE_FEE,
    late_cancellation_tiers=[
        LateCancellationTier(notice_under_hours=24, percent="50"),
        LateCancellationTier(notice_under_hours=6, percent="100"),
        LateCancellationTier(notice_under_hours=2, amount="200.00"),
    ],
)


@pytest.mark.parametrize(
    ("lead", "price", "amount", "tier"),
    [
        (24 * H, PRICE, "45.00", None),  # exactly 24 h: no tier is above the lead -> flat fee
        (24 * H - M, PRICE, "90.00", (24, "50")),  # just inside the 24 h tier
        (10 * H, PRICE, "90.00", (24, "50")),  # the rules' example: 10 h pays 50 %
        (6 * H, PRICE, "90.00", (24, "50")),  # exactly 6 h: the 6 h tier is not above the lead
        (6 * H - M, PRICE, "180.00", (6, "100")),
        (3 * H, PRICE, "180.00", (6, "100")),  # the rules' example: 3 h pays 100 %
        (2 * H, PRICE, "180.00", (6, "100")),
        (2 * H - M, PRICE, "200.00", (2, None)),  # an amount tier, in the flat fee's currency
        (M, PRICE, "200.00", (2, None)),
        (10 * H, None, "45.00", None),  # a percent tier without a price: the flat fee
        (H, None, "200.00", (2, None)),  # an amount tier needs no price
    ],
)
def test_late_fee_tiers_at_their_edges(lead, price, amount, tier):
    fee, decided = late_fee(lead, price, TIERS)
    assert fee is not None and fee.amount == Decimal(amount)
    assert (fee.currency, fee.code, fee.code_system) == ("AUD", "D9987", "CDT")
    if tier is None:
        assert decided is None
    else:
        assert (decided.notice_under_hours, str(decided.percent) if decided.percent is not None else None) == tier


def test_no_tiers_means_the_flat_fee():
    assert late_fee(H, PRICE, FeeSettings(late_cancellation=LATE_FEE)) == (LATE_FEE, None)


def test_a_percent_share_rounds_half_up_to_the_currencys_minor_unit():
    odd = FeeSettings(
        late_cancellation=LATE_FEE, late_cancellation_tiers=[LateCancellationTier(notice_under_hours=24, percent="50")]
    )
    fee, _ = late_fee(H, Money(amount="45.05", currency="AUD"), odd)
    assert fee.amount == Decimal("22.53")
    yen = Fee(amount="1000", currency="JPY", code="X", code_system="custom")
    fee, _ = late_fee(H, Money(amount="1001", currency="JPY"), odd.model_copy(update={"late_cancellation": yen}))
    assert (fee.amount, fee.currency) == (Decimal("501"), "JPY")
    assert round_money(Decimal("0.005"), "AUD") == Decimal("0.01")


@pytest.mark.parametrize(
    ("tiers", "problem"),
    [
        ([{"notice_under_hours": 24, "percent": "50"}], "need the flat late_cancellation fee"),
        ([{"notice_under_hours": 24}], "either a percent or an amount"),
        ([{"notice_under_hours": 24, "percent": "50", "amount": "10.00"}], "either a percent or an amount"),
        ([{"notice_under_hours": 24, "percent": "101"}], "less than or equal to 100"),
        ([{"notice_under_hours": 0, "percent": "50"}], "greater than or equal to 1"),
        ([{"notice_under_hours": 6, "percent": "50"}, {"notice_under_hours": 6, "percent": "60"}], "same notice"),
        ([{"notice_under_hours": 6, "amount": "10.001"}], "decimal places"),
    ],
)
def test_invalid_tiers_are_refused(tiers, problem):
    fees: dict = {"late_cancellation_tiers": tiers}
    if problem != "need the flat late_cancellation fee":
        fees["late_cancellation"] = LATE_FEE.to_json_dict()
    with pytest.raises(ValueError, match=problem):
        PracticeSettings.model_validate({"fees": fees})


@pytest.mark.parametrize(
    ("lead", "fee_decision", "fee", "tier"),
    [
        (10 * H, "policy", "90.00", 24),  # late: by its tier
        (30 * H, "policy", None, None),  # timely: nothing
        (30 * H, "charge", "45.00", None),  # staff charge a timely one: no tier is above 30 h, flat fee
        (3 * H, "charge", "180.00", 6),  # staff charge a late one: its tier
        (3 * H, "waive", None, None),
    ],
)
def test_a_staff_cancellation_names_the_tier_that_priced_it(lead, fee_decision, fee, tier):
    settings = PracticeSettings(fees=TIERS)
    req = request(STAFF, lead, fee_decision=fee_decision).model_copy(
        update={"booking": request(STAFF, lead).booking.model_copy(update={"price": PRICE})}
    )
    result = assess(req, settings)
    assert (result.fee.amount if result.fee else None) == (Decimal(fee) if fee else None)
    assert (result.tier.notice_under_hours if result.tier else None) == tier
    assert result.fee_waived is (True if fee_decision == "waive" else None)
    if tier is not None:
        assert f"tier under {tier} h of notice" in result.explanation


def test_a_patient_online_cancellation_pays_its_tier_too():
    settings = PracticeSettings(fees=TIERS, cancellation=CancellationSettings(patient_cutoff_hours=0))
    req = request(PATIENT, 10 * H).model_copy(
        update={"booking": request(PATIENT, 10 * H).booking.model_copy(update={"price": PRICE})}
    )
    result = assess(req, settings)
    assert (result.fee.amount, result.tier.percent) == (Decimal("90.00"), Decimal("50"))


@pytest.mark.parametrize(
    ("lead", "price", "percent", "delta", "pay"),
    [
        (24 * H, PRICE, 50, -10, None),  # exactly the office window: timely, nothing owed
        (24 * H - M, PRICE, 50, -50, "90.00"),  # inside: -50 and half the shift
        (H, PRICE, 50, -50, "90.00"),
        (H, None, 50, -50, None),  # no price: nothing to share
        (H, PRICE, 0, -50, None),  # the practice owes no share
        (H, Money(amount="45.05", currency="AUD"), 50, -50, "22.53"),
    ],
)
def test_office_accountability_at_the_office_window(lead, price, percent, delta, pay):
    settings = PracticeSettings(turnaway=TurnawaySettings(office_late_window_hours=24, percent_of_shift=percent))
    booking = request(STAFF, lead).booking.model_copy(update={"price": price})
    got_delta, got_pay, _ = office_accountability(booking, lead, settings)
    assert got_delta == delta
    assert (got_pay.amount if got_pay else None) == (Decimal(pay) if pay else None)


@pytest.mark.parametrize(
    ("actor", "professional_id", "expected"),
    [
        (STAFF, "pro-1", -50),  # staff cancelling a booked professional: the office answers
        (STAFF, None, None),  # no booked professional: no office score
        (PATIENT, "pro-1", None),  # a patient's cancellation is not the office's
        (PRO, "pro-1", None),  # the professional's own cancellation: their own score only
    ],
)
def test_only_staff_cancelling_a_booked_professional_cost_the_office(actor, professional_id, expected):
    settings = PracticeSettings(cancellation=CancellationSettings(patient_cutoff_hours=0))
    result = assess(request(actor, 10 * H, professional_id=professional_id), settings)
    assert result.allowed and result.office_score_delta == expected
    assert result.office_cause == (None if expected is None else "late_cancelled_professional")
    if actor is PRO:
        assert result.score_delta == -50  # untouched by the office rule


def test_a_timely_office_cancellation_costs_ten_and_owes_nothing():
    result = assess(request(STAFF, 30 * H), PracticeSettings())
    assert (result.office_score_delta, result.office_cause, result.turnaway_pay) == (
        -10,
        "cancelled_professional",
        None,
    )


def test_the_professionals_own_score_is_untouched_by_an_office_cancellation():
    result = assess(request(STAFF, 10 * H), PracticeSettings())
    assert (result.score_delta, result.hold_days) == (None, None)
    assert "office score -50" in result.explanation


V1 = SettingsVersion(1, PracticeSettings(fees=FeeSettings(late_cancellation=LATE_FEE)))
V2_NEW = SettingsVersion(2, PracticeSettings())
V2_ALL = SettingsVersion(2, PracticeSettings(policy_changes_apply_to="all_bookings"))


@pytest.mark.parametrize(
    ("current", "then", "known", "version"),
    [
        (V2_NEW, V1, True, 1),  # frozen: the version in force when scheduled
        (V2_ALL, V1, True, 2),  # all_bookings: the current version
        (V2_NEW, None, True, 0),  # scheduled before any configuration: the defaults
        (V2_NEW, None, False, 2),  # never saw it scheduled: the current version
        (V1, V1, True, 1),
    ],
)
def test_frozen_versus_applied_settings(current, then, known, version):
    assert settings_for_booking(current, then, known).version == version

"""The rule engine of docs/rules.md: who may cancel and when, classification, fees, deposits and
a professional's penalty. Pure: `assess(request, settings, policy_version)` over plain values,
deciding by the request's own time, so a replay or a lagging consumer decides the same.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from shared.contracts.base import Money, decimal_places
from shared.contracts.booking import BookingSnapshot, CancellationAssessmentRequested
from shared.contracts.common import DecidedTier, Fee
from shared.contracts.upstream import REASON_TEXT_MAX_CHARS, REASON_TEXT_TOO_LONG, FeeSettings, PracticeSettings

RULES_VERSION = "r1"

# Professional reliability (docs/rules.md#professional-reliability-score-and-holds).
PROFESSIONAL_PENALTY = {"timely": (-10, None), "late": (-50, 7), "no_show": (-100, 14)}
# Offices in a marketplace (docs/rules.md#offices-in-a-marketplace): staff cancelling a booked
# professional cost the office this much, timely or inside `turnaway.office_late_window_hours`.
OFFICE_PENALTY = {"timely": -10, "late": -50}


@dataclass(frozen=True)
class Assessment:
    allowed: bool
    classification: str
    explanation: str
    rejection_reason: str | None = None
    fee: Fee | None = None
    charge_card: bool = False
    deposit_action: str = "none"
    score_delta: int | None = None
    hold_days: int | None = None
    review_hours: int | None = None  # a fee waits this long for staff review (None: taken at once)
    tier: DecidedTier | None = None  # the late-cancellation tier that priced the fee
    office_score_delta: int | None = None  # staff cancelling a booked professional
    office_cause: str | None = None  # cancelled_professional | late_cancelled_professional
    turnaway_pay: Money | None = None  # owed by the office to that professional
    fee_waived: bool | None = None  # staff waived the fee


@dataclass(frozen=True)
class SettingsVersion:
    version: int
    settings: PracticeSettings
    configured_at: datetime | None = None  # None: the defaults (version 0)


# What decides for a practice that has configured nothing (yet): the contract's defaults, as
# version 0. Built once: the settings are a frozen model, shared safely by every decision.
DEFAULTS = SettingsVersion(0, PracticeSettings())


def settings_for_booking(
    current: SettingsVersion, in_force_when_scheduled: SettingsVersion | None, scheduled_known: bool
) -> SettingsVersion:
    """Which settings decide a booking (docs/rules.md, frozen policy): those in force when it was
    scheduled, unless the practice's current settings apply changes to all bookings, or we never
    saw the booking scheduled (then the current ones). `in_force_when_scheduled` None with the
    schedule known means the practice had configured nothing yet: the defaults, version 0."""
    if current.settings.policy_changes_apply_to == "all_bookings" or not scheduled_known:
        return current
    return in_force_when_scheduled or DEFAULTS


def round_money(amount: Decimal, currency: str) -> Decimal:
    """`amount` to the currency's minor unit, halves up (50 % of 45.05 AUD is 22.53)."""
    return amount.quantize(Decimal(1).scaleb(-decimal_places(currency)), rounding=ROUND_HALF_UP)


def share_of(price: Money, percent: Decimal) -> Money | None:
    """`percent` of `price`, in its currency; None when that rounds to nothing."""
    amount = round_money(price.amount * percent / 100, price.currency)
    return Money.new(amount=amount, currency=price.currency) if amount > 0 else None


def late_fee(lead: timedelta, price: Money | None, fees: FeeSettings) -> tuple[Fee | None, DecidedTier | None]:
    """The late-cancellation fee for `lead` of notice (docs/rules.md, tiers): the tier with the
    smallest `notice_under_hours` still above the lead; a percent tier of the booking's price (no
    price: the flat fee); an amount tier in the flat fee's currency; no tier: the flat fee."""
    flat = fees.late_cancellation
    matching = [tier for tier in fees.late_cancellation_tiers if lead < timedelta(hours=tier.notice_under_hours)]
    if flat is None or not matching:
        return flat, None
    tier = min(matching, key=lambda t: t.notice_under_hours)
    if tier.amount is not None:
        fee = Fee.new(amount=tier.amount, currency=flat.currency, code=flat.code, code_system=flat.code_system)
        return fee, DecidedTier.new(notice_under_hours=tier.notice_under_hours)
    assert tier.percent is not None  # a tier has one or the other (FeeSettings checks)
    if price is None:
        return flat, None
    share = share_of(price, tier.percent)
    decided = DecidedTier.new(notice_under_hours=tier.notice_under_hours, percent=tier.percent)
    if share is None:
        return None, decided
    return Fee.new(amount=share.amount, currency=share.currency, code=flat.code, code_system=flat.code_system), decided


def office_accountability(
    booking: BookingSnapshot, lead: timedelta, settings: PracticeSettings
) -> tuple[int | None, Money | None, bool]:
    """What the office answers for when its staff cancel a booked professional: its score delta,
    the turn-away pay it owes the professional (inside the office's late window, a share of the
    price), and whether the cancellation was inside that window."""
    if booking.professional_id is None:
        return None, None, False
    turnaway = settings.turnaway
    late = lead < timedelta(hours=turnaway.office_late_window_hours)
    pay = None
    if late and booking.price is not None and turnaway.percent_of_shift > 0:
        pay = share_of(booking.price, Decimal(turnaway.percent_of_shift))
    return OFFICE_PENALTY["late" if late else "timely"], pay, late


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    if abs(hours) < 1:
        return f"{int(delta.total_seconds() // 60)} min"
    return f"{hours:.1f} h".replace(".0 h", " h")


def _reject(reason: str, message: str, classification: str = "timely") -> Assessment:
    return Assessment(allowed=False, classification=classification, rejection_reason=reason, explanation=message)


def classify(lead: timedelta, actor_kind: str, settings: PracticeSettings) -> str:
    rules = settings.cancellation
    if actor_kind == "professional" and lead <= timedelta(minutes=rules.professional_no_show_minutes):
        return "no_show"
    if lead < timedelta(hours=rules.late_window_hours):
        return "late"
    return "timely"


def _deposit_action(
    has_deposit: bool, classification: str, fee_waived: bool, settings: PracticeSettings, deposit_decision: str
) -> str:
    if not has_deposit:
        return "none"
    if deposit_decision != "policy":
        return deposit_decision  # staff chose at cancel time: wins over the policy's rule
    if fee_waived:
        return "refund"
    action: str = getattr(settings.deposits, classification)
    return action


def _patient_fee(
    kind: str,
    classification: str,
    fee_decision: str,
    settings: PracticeSettings,
    lead: timedelta = timedelta(0),
    price: Money | None = None,
) -> tuple[Fee | None, DecidedTier | None]:
    """The fee a patient pays: by policy for late/no-show (a late cancellation by its tier),
    forced by staff's `charge`, none when waived."""
    if fee_decision == "waive":
        return None, None
    if fee_decision == "charge" or classification in ("late", "no_show"):
        if kind == "no_show":
            return settings.fees.no_show, None
        return late_fee(lead, price, settings.fees)
    return None, None


def assess(request: CancellationAssessmentRequested, settings: PracticeSettings) -> Assessment:
    assessment = _assess(request, settings)
    if request.claimed_at is None:
        return assessment
    # docs/rules.md, "Time and trust": a claimed time outside the tolerance is not believed.
    return replace(
        assessment,
        explanation=f"{assessment.explanation} Decided at the time the request reached us"
        f" ({request.requested_at:%Y-%m-%d %H:%M} UTC), not the time it claims"
        f" ({request.claimed_at:%Y-%m-%d %H:%M} UTC), which lies outside the accepted tolerance.",
    )


def _assess(request: CancellationAssessmentRequested, settings: PracticeSettings) -> Assessment:
    booking = request.booking
    actor = request.actor
    lead = booking.starts_at - request.requested_at
    rules = settings.cancellation

    if request.reason_text is not None and len(request.reason_text) > REASON_TEXT_MAX_CHARS:
        return _reject("invalid_request", REASON_TEXT_TOO_LONG)
    if request.fee_decision != "policy" and actor.kind != "staff":
        return _reject(
            "not_allowed",
            "Only practice staff can choose to charge or waive a fee; please send the request without a fee decision.",
        )
    if request.deposit_decision != "policy" and actor.kind != "staff":
        return _reject(
            "not_allowed",
            "Only practice staff can choose what becomes of a deposit; please send the request without a deposit"
            " decision.",
        )
    if request.kind == "no_show":
        return _assess_no_show(request, settings, lead)

    if actor.kind == "patient":
        if not booking.patient_portal_account:
            return _reject(
                "no_portal_account", "Please sign up for the patient portal, or contact the practice to cancel."
            )
        if not rules.online_enabled:
            return _reject(
                "online_cancellation_disabled",
                "This practice does not take cancellations online; please contact the practice to cancel.",
            )
        if lead <= timedelta(0):
            return _reject("appointment_started", "This appointment has already started; please contact the practice.")
        if lead < timedelta(hours=rules.patient_cutoff_hours):
            return _reject(
                "within_online_cutoff",
                f"Please contact the practice to cancel within {rules.patient_cutoff_hours} hours of your appointment.",
            )
    elif actor.kind == "staff":
        if lead <= timedelta(0):
            return _reject(
                "appointment_started",
                "This appointment has already started: record it as a no-show (FTA or DNA) instead of cancelling it.",
            )
    elif actor.kind == "professional":
        if booking.professional_id is None or actor.id != booking.professional_id:
            return _reject(
                "not_allowed",
                "Only the professional booked for this appointment can cancel it; please contact the office.",
            )
        if lead <= timedelta(0):
            return _reject("appointment_started", "This appointment has already started; please contact the office.")
    else:  # system: only a future booking, always without penalty
        if lead <= timedelta(0):
            return _reject("appointment_started", "The system cancels only bookings that have not started yet.")
        has_deposit = booking.deposit is not None
        return Assessment(
            allowed=True,
            classification="timely",
            deposit_action="refund" if has_deposit else "none",
            explanation="Cancelled by the system (the professional's account is suspended): no fee, no penalty"
            + (", deposit refunded." if has_deposit else "."),
        )

    classification = classify(lead, actor.kind, settings)
    window = f"{_hours(lead)} before the start; late window {rules.late_window_hours} h" + (
        f", no-show threshold {rules.professional_no_show_minutes} min" if actor.kind == "professional" else ""
    )
    if actor.kind == "professional":
        delta, hold = PROFESSIONAL_PENALTY[classification]
        has_deposit = booking.deposit is not None
        return Assessment(
            allowed=True,
            classification=classification,
            score_delta=delta,
            hold_days=hold,
            deposit_action="refund" if has_deposit else "none",
            explanation=f"Cancelled by the professional {window}: {classification.replace('_', '-')}, "
            f"score {delta:+d}" + (f", {hold}-day hold" if hold else "") + "; the patient pays nothing.",
        )

    fee, tier = _patient_fee("cancellation", classification, request.fee_decision, settings, lead, booking.price)
    office_delta, turnaway_pay, office_late = (
        office_accountability(booking, lead, settings) if actor.kind == "staff" else (None, None, False)
    )
    deposit = _deposit_action(
        booking.deposit is not None,
        classification,
        request.fee_decision == "waive",
        settings,
        request.deposit_decision,
    )
    return Assessment(
        allowed=True,
        classification=classification,
        fee=fee,
        charge_card=bool(fee and settings.fees.charge_card_on_file and booking.patient_card_on_file),
        deposit_action=deposit,
        review_hours=_review_hours(fee, settings),
        tier=tier,
        office_score_delta=office_delta,
        office_cause=None
        if office_delta is None
        else ("late_cancelled_professional" if office_late else "cancelled_professional"),
        turnaway_pay=turnaway_pay,
        fee_waived=True if request.fee_decision == "waive" else None,
        explanation=_patient_explanation(
            f"Cancelled {window}", classification, fee, request.fee_decision, deposit, tier=tier
        )
        + _office_explanation(office_delta, turnaway_pay, office_late, settings),
    )


def _assess_no_show(
    request: CancellationAssessmentRequested, settings: PracticeSettings, lead: timedelta
) -> Assessment:
    booking = request.booking
    if request.actor.kind not in ("staff", "system"):
        return _reject(
            "not_allowed", "Only practice staff can report a no-show; please contact the practice.", "no_show"
        )
    if lead > timedelta(0):
        return _reject(
            "appointment_not_started",
            "This appointment has not started yet: report the no-show at or after its start time, or cancel it instead.",
            "no_show",
        )
    has_deposit = booking.deposit is not None
    if request.party == "professional":
        delta, hold = PROFESSIONAL_PENALTY["no_show"]
        return Assessment(
            allowed=True,
            classification="no_show",
            score_delta=delta,
            hold_days=hold,
            deposit_action="refund" if has_deposit else "none",
            explanation=f"The professional did not attend ({request.code}): score {delta:+d}, {hold}-day hold; "
            "the patient pays nothing.",
        )
    fee, _ = _patient_fee("no_show", "no_show", request.fee_decision, settings)
    deposit = _deposit_action(has_deposit, "no_show", request.fee_decision == "waive", settings, "policy")
    return Assessment(
        allowed=True,
        classification="no_show",
        fee=fee,
        charge_card=bool(fee and settings.fees.charge_card_on_file and booking.patient_card_on_file),
        deposit_action=deposit,
        review_hours=_review_hours(fee, settings),
        fee_waived=True if request.fee_decision == "waive" else None,
        explanation=_patient_explanation(
            f"The patient did not attend ({request.code})", "no_show", fee, request.fee_decision, deposit
        ),
    )


def _review_hours(fee: Fee | None, settings: PracticeSettings) -> int | None:
    """How long billing holds the fee for staff review (docs/rules.md, review before taking money)."""
    return settings.fees.review_hours if fee is not None and settings.fees.review_hours > 0 else None


def _office_explanation(delta: int | None, pay: Money | None, late: bool, settings: PracticeSettings) -> str:
    if delta is None:
        return ""
    window = settings.turnaway.office_late_window_hours
    where = f"inside the office's {window} h window" if late else f"{window} h or more ahead"
    owed = f", and owes the professional {pay.amount} {pay.currency} turn-away pay" if pay is not None else ""
    return f" The office cancelled its booked professional {where}: office score {delta:+d}{owed}."


def _patient_explanation(
    what: str,
    classification: str,
    fee: Fee | None,
    fee_decision: str,
    deposit: str,
    *,
    tier: DecidedTier | None = None,
) -> str:
    parts = [f"{what}: {classification.replace('_', '-')}"]
    if fee is not None:
        by_tier = ""
        if tier is not None:
            share = f"{tier.percent} % of the price, " if tier.percent is not None else ""
            by_tier = f", {share}tier under {tier.notice_under_hours} h of notice"
        parts.append(
            f"fee {fee.amount} {fee.currency} ({fee.code_system} {fee.code}{by_tier})"
            + (" charged by staff" if fee_decision == "charge" else "")
        )
    elif fee_decision == "waive":
        parts.append("fee waived by staff")
    else:
        parts.append("no fee")
    if deposit != "none":
        parts.append(
            {"refund": "deposit refunded", "keep": "deposit kept", "credit_note": "deposit turned into a credit note"}[
                deposit
            ]
        )
    return "; ".join(parts) + "."

"""Charges, payments and deposits (docs/rules.md#fees-and-deposits). Pure: plain values in, plain
values out, no I/O.

Guarantees:
- Money is exact: an amount becomes integer minor units of its currency and back, through
  `Decimal` only. A currency has the decimal places the contract checks amounts with
  (`shared.contracts.base.decimal_places`, Babel's data: JPY 0, AUD/USD/EUR 2, KWD 3 …). An
  amount with more decimals than its currency has, or a negative one, is refused, never rounded.
- A charge, a payment and a credit note have ids derived from what caused them (uuid5 of the
  booking and the request), so a redelivery or a replay names the row that exists already and
  cannot make a second one.
- The fee decided by the policy is the fee charged: a cancellation raises a `late_cancellation`
  charge, a no-show a `no_show` charge; a decision without a fee (or a zero fee) raises none.
- A deposit is refunded, kept or turned into a credit note exactly as the decision says; `none`
  or no deposit does nothing. Deposit and fee are independent.
- Only owner, manager, biller, or a therapist who also has the financial role may change a
  charge's amount or code, decide its review, or waive it. A charge being captured is being
  charged for its current amount (`capture_in_progress`); any other charge's amount can change at
  any time (second release): what was paid beyond the new amount is refunded, what is owed beyond
  what was paid is charged to the card it was paid with, or left owing (`plan_fee_change`). Its
  code can always be corrected (it moves no money). A request that changes nothing is
  `invalid_request`.
- A fee raised with a review window (`decision.review_hours`) is `pending_review` until staff
  approve, edit or waive it, or the window ends (approved); only then is it taken or owed.
- A refund or top-up has an id derived from the charge, the request and its kind: the same
  command twice moves the money once, and the id is the gateway's idempotency key.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from shared.contracts.base import Money, decimal_places
from shared.contracts.common import Decision

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cancellations:billing")

ChargeKind = Literal["late_cancellation", "no_show"]
ChargeStatus = Literal["pending_review", "outstanding", "pending_capture", "paid", "waived"]
DepositOutcome = Literal["refunded", "kept", "credit_note"]


class InvalidAmount(ValueError):
    """An amount that is not exact money of its currency; it can never be processed."""


def exponent(currency: str) -> int:
    """How many decimals the currency has: the contract's rule (`decimal_places`, Babel's
    data), so billing stores exactly the amounts the contract lets through."""
    return decimal_places(currency.upper())


def to_minor(amount: Decimal, currency: str) -> int:
    """`Decimal("45.00")` AUD -> 4500; `Decimal("3000")` JPY -> 3000. Never rounds."""
    if not isinstance(amount, Decimal):
        raise InvalidAmount(f"an amount must be a Decimal, not {type(amount).__name__}")
    if not amount.is_finite() or amount < 0:
        raise InvalidAmount(f"{amount} {currency} is not an amount of money")
    scaled = amount.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise InvalidAmount(f"{amount} {currency} has more decimals than {currency} has ({exponent(currency)})")
    return int(scaled)


def from_minor(minor: int, currency: str) -> Decimal:
    """4500 AUD -> `Decimal("45.00")`; 3000 JPY -> `Decimal("3000")`: exactly the currency's decimals."""
    places = exponent(currency)
    return Decimal(minor).scaleb(-places).quantize(Decimal(1).scaleb(-places))


@dataclass(frozen=True)
class ChargePlan:
    """The charge one decision raises."""

    charge_id: str
    kind: ChargeKind
    amount_minor: int
    currency: str
    code: str
    code_system: str
    status: ChargeStatus  # pending_capture when the card on file is charged, else outstanding
    review_until: datetime | None = None  # set when the fee waits for staff (status pending_review)

    @property
    def amount(self) -> Decimal:
        return from_minor(self.amount_minor, self.currency)


@dataclass(frozen=True)
class DepositPlan:
    """What becomes of the deposit paid ahead."""

    outcome: DepositOutcome
    amount_minor: int
    currency: str
    credit_note_id: str | None = None

    @property
    def amount(self) -> Decimal:
        return from_minor(self.amount_minor, self.currency)


def charge_id(booking_id: str, request_id: str) -> str:
    """One charge per booking and request: a redelivery cannot raise a second."""
    return str(uuid.uuid5(_NAMESPACE, f"charge:{booking_id}:{request_id}"))


def credit_note_id(booking_id: str, request_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"credit_note:{booking_id}:{request_id}"))


def payment_id(charge_id_: str) -> str:
    """One payment per charge: the card is charged once, with the charge id as idempotency key."""
    return str(uuid.uuid5(_NAMESPACE, f"payment:{charge_id_}"))


def plan_charge(
    request: Literal["cancellation", "no_show"],
    booking_id: str,
    request_id: str,
    decision: Decision,
    at: datetime | None = None,
) -> ChargePlan | None:
    """The charge a cancellation or no-show raises, or None when the decision carries no fee.
    With a review window (`decision.review_hours`) it waits `pending_review` until `at` plus the
    window (`at`: the cancellation's or no-show's own time, so a replay decides the same)."""
    fee = decision.fee
    if fee is None:
        return None
    amount_minor = to_minor(fee.amount, fee.currency)
    if amount_minor == 0:
        return None  # a fee of nothing is no fee: no charge to collect or show as owed
    review = bool(decision.review_hours) and at is not None
    return ChargePlan(
        charge_id=charge_id(booking_id, request_id),
        kind="late_cancellation" if request == "cancellation" else "no_show",
        amount_minor=amount_minor,
        currency=fee.currency,
        code=fee.code,
        code_system=fee.code_system,
        status="pending_review" if review else final_status(decision.charge_card),
        review_until=at + timedelta(hours=decision.review_hours or 0) if review and at is not None else None,
    )


def final_status(charge_card: bool) -> ChargeStatus:
    """What a fee becomes once it is final: charged to the card on file, or owed on the account."""
    return "pending_capture" if charge_card else "outstanding"


_DEPOSIT_OUTCOMES: dict[str, DepositOutcome] = {"refund": "refunded", "keep": "kept", "credit_note": "credit_note"}


def plan_deposit(booking_id: str, request_id: str, decision: Decision, deposit: Money | None) -> DepositPlan | None:
    """What the decision does with the deposit, or None (`none`, or no deposit was paid)."""
    if deposit is None or decision.deposit_action == "none":
        return None
    outcome = _DEPOSIT_OUTCOMES[decision.deposit_action]
    return DepositPlan(
        outcome=outcome,
        amount_minor=to_minor(deposit.amount, deposit.currency),
        currency=deposit.currency,
        credit_note_id=credit_note_id(booking_id, request_id) if outcome == "credit_note" else None,
    )


def status_after_payment(captured: bool) -> ChargeStatus:
    """A captured payment settles the charge; a failed one leaves it owed on the account."""
    return "paid" if captured else "outstanding"


# --- adjustments ---------------------------------------------------------------------------

# Roles that may change a charge on their own; a therapist needs the financial role as well.
ADJUSTER_ROLES = frozenset({"owner", "manager", "biller"})
CODE_SYSTEMS = frozenset({"CPT", "CDT", "custom"})

AdjustmentRejection = Literal["forbidden", "invalid_request", "not_found", "capture_in_progress", "waived"]


def may_adjust(roles: list[str] | tuple[str, ...] | frozenset[str]) -> bool:
    """Owner, manager, biller, or a therapist who also has the financial role."""
    held = {role.strip().lower() for role in roles}
    return bool(held & ADJUSTER_ROLES) or {"therapist", "financial"} <= held


@dataclass(frozen=True)
class ChargeTerms:
    """What an adjustment may change, and the currency it is counted in."""

    amount_minor: int
    currency: str
    code: str
    code_system: str

    @property
    def amount(self) -> Decimal:
        return from_minor(self.amount_minor, self.currency)

    def as_json(self) -> dict[str, object]:
        return {
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "code": self.code,
            "code_system": self.code_system,
        }


@dataclass(frozen=True)
class AdjustmentDecision:
    before: ChargeTerms | None  # None when the charge does not exist
    after: ChargeTerms | None = None  # set when adjusted
    rejection: AdjustmentRejection | None = None

    @property
    def adjusted(self) -> bool:
        return self.rejection is None


def decide_adjustment(
    *,
    roles: list[str],
    charge: ChargeTerms | None,
    charge_status: ChargeStatus | None,
    amount: Decimal | None,
    code: str | None,
    code_system: str | None,
) -> AdjustmentDecision:
    """The answer to `charge.adjustment_requested`: who may ask first (a refused person learns
    nothing about the charge), then whether the request asks for anything, then the charge."""
    if not may_adjust(roles):
        return AdjustmentDecision(charge, rejection="forbidden")
    if amount is None and code is None and code_system is None:
        return AdjustmentDecision(charge, rejection="invalid_request")  # nothing asked for
    if charge is None:
        return AdjustmentDecision(None, rejection="not_found")  # never adjusted into existence
    if code is not None and not code.strip():
        return AdjustmentDecision(charge, rejection="invalid_request")
    if code_system is not None and code_system not in CODE_SYSTEMS:
        return AdjustmentDecision(charge, rejection="invalid_request")
    amount_minor = charge.amount_minor
    if amount is not None:
        try:
            amount_minor = to_minor(amount, charge.currency)
        except InvalidAmount:
            return AdjustmentDecision(charge, rejection="invalid_request")  # inexact: never rounded
        if amount_minor == 0:
            # Writing a charge off is not an adjustment of its amount.
            return AdjustmentDecision(charge, rejection="invalid_request")
    after = ChargeTerms(
        amount_minor=amount_minor,
        currency=charge.currency,
        code=code.strip() if code is not None else charge.code,
        code_system=code_system if code_system is not None else charge.code_system,
    )
    if after == charge:
        return AdjustmentDecision(charge, rejection="invalid_request")  # changes nothing
    if charge_status == "waived":
        return AdjustmentDecision(charge, rejection="waived")  # nothing is owed: a new fee is a new charge
    if after.amount_minor != charge.amount_minor and charge_status == "pending_capture":
        return AdjustmentDecision(charge, rejection="capture_in_progress")
    return AdjustmentDecision(charge, after=after)


def _edited_terms(
    charge: ChargeTerms, amount: Decimal | None, code: str | None, code_system: str | None
) -> ChargeTerms | None:
    """The charge with the amount and code asked for; None when that is not a valid charge."""
    if code is not None and not code.strip():
        return None
    if code_system is not None and code_system not in CODE_SYSTEMS:
        return None
    amount_minor = charge.amount_minor
    if amount is not None:
        try:
            amount_minor = to_minor(amount, charge.currency)
        except InvalidAmount:
            return None
        if amount_minor == 0:
            return None
    return ChargeTerms(
        amount_minor=amount_minor,
        currency=charge.currency,
        code=code.strip() if code is not None else charge.code,
        code_system=code_system if code_system is not None else charge.code_system,
    )


# --- changing a fee after money moved (second release) ------------------------------------


@dataclass(frozen=True)
class FeeChange:
    """What a new amount (or a waiver) does to a charge: its status and what was paid after it,
    and the money to move through the gateway (at most one of the two is set)."""

    status: ChargeStatus
    paid_minor: int
    refund_minor: int = 0
    top_up_minor: int = 0


def plan_fee_change(
    *, status: ChargeStatus, amount_minor: int, paid_minor: int, charge_card: bool, waive: bool = False
) -> FeeChange:
    """Lower than what was paid: the difference is refunded. Higher: what is owed beyond it is
    charged to the card the fee was paid with (`charge_card` and something paid), else owed on
    the account. Waived: all that was paid is refunded. A fee still in review has taken nothing:
    it keeps waiting (or is waived). Never called for a charge being captured."""
    if status == "pending_capture":
        raise ValueError("a charge being captured changes only once the capture settled")
    if waive:
        return FeeChange("waived", 0, refund_minor=paid_minor)
    if status == "pending_review":
        return FeeChange("pending_review", 0)
    if amount_minor <= paid_minor:
        return FeeChange("paid", amount_minor, refund_minor=paid_minor - amount_minor)
    if paid_minor > 0 and charge_card:
        return FeeChange("pending_capture", paid_minor, top_up_minor=amount_minor - paid_minor)
    return FeeChange("outstanding", paid_minor)


def movement_id(charge_id_: str, request_id: str, kind: Literal["refund", "top_up"]) -> str:
    """One refund or top-up per charge, request and kind: the gateway's idempotency key."""
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{charge_id_}:{request_id}"))


# --- review before taking money (second release) ------------------------------------------

ReviewRejection = Literal["forbidden", "not_found", "not_pending"]
ReviewOutcome = Literal["approved", "edited", "waived"]


@dataclass(frozen=True)
class ReviewAnswer:
    """The answer to `charge.review_decided`: an outcome (with the terms after an edit), a
    rejection the contract names, or `refused` (an edit the charge cannot take: the contract has
    no reason for it, so it is recorded and answered in the read API, and the fee keeps waiting)."""

    outcome: ReviewOutcome | None = None
    rejection: ReviewRejection | None = None
    refused: str | None = None
    after: ChargeTerms | None = None


def decide_review(
    *,
    roles: list[str],
    charge: ChargeTerms | None,
    charge_status: ChargeStatus | None,
    decision: Literal["approve", "waive", "edit"],
    amount: Decimal | None = None,
    code: str | None = None,
    code_system: str | None = None,
) -> ReviewAnswer:
    """Who may first (the same roles as an adjustment), then the charge. Approve and edit need a
    fee in review; waive takes any fee that is owed or paid (a paid one is refunded), but not one
    being captured or already waived."""
    if not may_adjust(roles):
        return ReviewAnswer(rejection="forbidden")
    if charge is None:
        return ReviewAnswer(rejection="not_found")
    if decision == "waive":
        if charge_status in ("pending_capture", "waived"):
            return ReviewAnswer(rejection="not_pending")
        return ReviewAnswer(outcome="waived")
    if charge_status != "pending_review":
        return ReviewAnswer(rejection="not_pending")
    if decision == "approve":
        return ReviewAnswer(outcome="approved")
    if amount is None and code is None and code_system is None:
        return ReviewAnswer(refused="an edit names a new amount or code")
    after = _edited_terms(charge, amount, code, code_system)
    if after is None:
        return ReviewAnswer(refused="the amount or code of the edit is not one the charge can take")
    if after == charge:
        return ReviewAnswer(outcome="approved")  # an edit that changes nothing approves the fee
    return ReviewAnswer(outcome="edited", after=after)

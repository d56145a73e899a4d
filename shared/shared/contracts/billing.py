"""What the billing service publishes on `billing.events.v1`.

Guarantees: amounts are flat `amount` (a decimal string, never a float) and `currency` (ISO
4217) exactly as CONTRACT.md lists them, checked together as `Money` is (`FlatMoney`); a charge adjustment is answered by exactly one of
`charge.adjusted` (with the charge before and after) or `charge.adjustment_rejected` (with a
reason), both carrying the command's `request_id`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from .base import Amount, Currency, FlatMoney, Payload
from .common import ChargeKind, Code, CodeSystem, ErrorText, Fee, Id, Label, UtcDatetime

# Second release: `due` is final (taken or owed at once); `pending_review` waits for staff until
# `review_until`, and is announced again as `due` when it becomes final (approved, edited, or
# approved by the window's end). A waived fee is `charge.waived`.
ChargeCreatedStatus = Literal["due", "pending_review"]


class ChargeCreated(Payload, FlatMoney):
    event_type: ClassVar[str] = "charge.created"

    charge_id: Id
    booking_id: Id
    patient_id: Id
    kind: ChargeKind
    amount: Amount
    currency: Currency
    code: Code
    code_system: CodeSystem
    status: ChargeCreatedStatus | None = None  # second release; None from an older producer: due
    review_until: UtcDatetime | None = None  # with pending_review


# Sibling events share fields through private bases, never by subclassing one another, so
# `isinstance(event, PaymentCaptured)` can never be true of a failed payment.


class _PaymentOutcome(Payload, FlatMoney):
    charge_id: Id
    booking_id: Id
    amount: Amount
    currency: Currency


class PaymentCaptured(_PaymentOutcome):
    event_type: ClassVar[str] = "payment.captured"


class PaymentFailed(_PaymentOutcome):
    event_type: ClassVar[str] = "payment.failed"

    failure_reason: ErrorText | None = None


class _DepositOutcome(Payload, FlatMoney):
    booking_id: Id
    amount: Amount
    currency: Currency


class DepositRefunded(_DepositOutcome):
    event_type: ClassVar[str] = "deposit.refunded"


class DepositKept(_DepositOutcome):
    event_type: ClassVar[str] = "deposit.kept"


class CreditNoteIssued(_DepositOutcome):
    """The deposit becomes credit for a later appointment."""

    event_type: ClassVar[str] = "credit_note.issued"

    credit_note_id: Id | None = None


class ChargeAdjusted(Payload):
    event_type: ClassVar[str] = "charge.adjusted"

    charge_id: Id
    request_id: Id
    before: Fee  # the charge's amount, currency and code before the adjustment
    after: Fee


class ChargeAdjustmentRejected(Payload):
    event_type: ClassVar[str] = "charge.adjustment_rejected"

    charge_id: Id
    request_id: Id
    reason: Label  # forbidden, invalid_request, not_found, already_paid, capture_in_progress


# --- second release ------------------------------------------------------------------------


class ChargeWaived(Payload):
    """The fee is not owed any more (waived in review, or later: then what was paid is refunded)."""

    event_type: ClassVar[str] = "charge.waived"

    charge_id: Id
    booking_id: Id
    request_id: Id


class ChargeReviewRejected(Payload):
    event_type: ClassVar[str] = "charge.review_rejected"

    charge_id: Id
    request_id: Id
    reason: Literal["forbidden", "not_found", "not_pending"]


class PaymentRefunded(Payload, FlatMoney):
    """Money given back to the card it was taken from, through the gateway."""

    event_type: ClassVar[str] = "payment.refunded"

    charge_id: Id
    booking_id: Id
    refund_id: Id
    amount: Amount
    currency: Currency
    reason: Literal["adjustment", "waived"]


class TurnawayPayOwed(Payload, FlatMoney):
    """Second release (issue 17): a marketplace office's staff cancelled a booked professional
    inside the office's late window; the office owes the professional this share of the
    booking's price (the policy's decision). Once per booking."""

    event_type: ClassVar[str] = "turnaway_pay.owed"

    booking_id: Id
    practice_id: Id
    professional_id: Id
    amount: Amount
    currency: Currency

"""Value types several events share: ids, times, amounts, actors, patients, fees, decisions.

Guarantees: an id is a non-empty string; a time is timezone-aware and held in UTC; an amount
is a `Decimal` that travels as a string and is never accepted from a float; every enumerated
field is one of the values CONTRACT.md names (a `Literal`), so an unknown value is a contract
violation, not a silent fallback.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, StringConstraints

from .base import ContractModel, DecimalStr, Money


def _not_a_float(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError("money amounts are decimal strings, never floats")
    return value


def _in_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _currency_code(value: str) -> str:
    if len(value) != 3 or not value.isalpha():
        raise ValueError("currency must be a 3-letter ISO 4217 code")
    return value.upper()


Id = Annotated[str, StringConstraints(min_length=1)]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_in_utc)]
# A flat amount (`amount, currency` side by side in a payload): same rules as `Money.amount`.
Amount = Annotated[DecimalStr, BeforeValidator(_not_a_float)]
Currency = Annotated[str, AfterValidator(_currency_code)]

# --- enumerations named by CONTRACT.md -------------------------------------------------------

ActorKind = Literal["patient", "staff", "professional", "system"]
Channel = Literal["patient_portal", "practice", "professional_app", "system"]
Scope = Literal["this", "this_and_future"]
FeeDecision = Literal["policy", "charge", "waive"]
Party = Literal["patient", "professional"]
NoShowCode = Literal["FTA", "DNA"]
Classification = Literal["timely", "late", "no_show"]
CodeSystem = Literal["CPT", "CDT", "custom"]
DepositAction = Literal["refund", "keep", "credit_note", "none"]
DepositChoice = Literal["refund", "keep", "credit_note"]  # what a practice configures
StatusLabel = Literal["Cancelled", "Cancelled online"]
RejectionReason = Literal[
    "not_found",
    "already_cancelled",
    "already_completed",
    "appointment_started",
    "appointment_not_started",
    "online_cancellation_disabled",
    "within_online_cutoff",
    "no_portal_account",
    "not_allowed",
    "invalid_request",
]
ContactChannel = Literal["email", "sms"]
PmsIntegration = Literal["praktika", "core_practice", "manual", "none"]
SyncedIntegration = Literal["praktika", "core_practice"]  # the ones with a pms-sync topic
PmsAction = Literal["cancel_booking", "record_no_show"]
ChargeKind = Literal["late_cancellation", "no_show"]
ScoreCause = Literal["cancelled", "late_cancelled", "no_show", "completed", "excused", "recalculated"]
HoldCause = Literal["late_cancellation", "no_show"]
HoldLiftCause = Literal["excused", "expired"]
ExcuseDecision = Literal["approved", "rejected"]
Recipient = Literal["patient", "practice", "professional", "waitlist"]
AckStatus = Literal["ok", "error"]


# --- shared value objects --------------------------------------------------------------------


class Actor(ContractModel):
    """Who asked: a patient, a staff member, a professional or the system itself."""

    kind: ActorKind
    id: Id
    roles: list[str] = []


class StaffActor(ContractModel):
    """The actor of a billing command: always practice staff, so it carries no `kind`."""

    id: Id
    roles: list[str] = []


class Patient(ContractModel):
    patient_id: Id
    first_name: str
    email: str | None = None
    phone: str | None = None
    portal_account: bool
    card_on_file: bool
    locale: str | None = None


class Fee(Money):
    """Money with the billing code a PMS and a claim need (`amount` never a float)."""

    code: str
    code_system: CodeSystem


class Decision(ContractModel):
    """The cancellation policy's answer, as embedded in `booking.cancelled` and
    `booking.no_show_recorded` (the fields of `cancellation.assessed` without its ids)."""

    allowed: bool
    rejection_reason: RejectionReason | None = None
    classification: Classification
    fee: Fee | None = None
    charge_card: bool
    deposit_action: DepositAction
    score_delta: int | None = None  # professional cancellations and no-shows
    hold_days: int | None = None  # professional cancellations and no-shows
    policy_version: str
    explanation: str | None = None  # plain words: why this decision (optional addition)

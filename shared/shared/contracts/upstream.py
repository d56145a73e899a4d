"""Inbound events: what upstream systems, staff tools and PMS connectors publish to us.

Guarantees: a payload that parses here has every field CONTRACT.md requires, with the
contract's defaults filled in where it allows a field to be left out (`scope` "this",
`fee_decision` "policy", every practice setting). Business rules are NOT enforced here: a
`reason_text` over 255 characters parses, so the booking service can answer it with
`invalid_request` instead of dead-lettering a request a person is waiting on.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import Field, field_validator

from .base import ContractModel, Money, Payload
from .common import (
    AckStatus,
    Actor,
    Amount,
    Channel,
    CodeSystem,
    ContactChannel,
    DepositChoice,
    ExcuseDecision,
    Fee,
    FeeDecision,
    Id,
    NoShowCode,
    Party,
    Patient,
    PmsIntegration,
    Scope,
    StaffActor,
    UtcDatetime,
)

REASON_TEXT_MAX_CHARS = 255  # a rule the booking service applies (invalid_request), not a parse check


def _null_means_default(value: Any, default: str) -> Any:
    # "optional" in the contract: a producer that sends null meant "not given".
    return default if value is None else value


# --- upstream.bookings.v1 --------------------------------------------------------------------


class ProfessionalContact(ContractModel):
    """How to reach the booked professional (optional addition within v1): the notification
    service tells them about holds and a suspension by email."""

    first_name: str | None = None
    email: str | None = None
    phone: str | None = None
    locale: str | None = None


class BookingScheduled(Payload):
    event_type: ClassVar[str] = "booking.scheduled"

    booking_id: Id
    practice_id: Id
    starts_at: UtcDatetime
    ends_at: UtcDatetime
    practitioner_id: Id
    service_code: str
    patient: Patient
    professional_id: Id | None = None  # a booked professional in a staffing marketplace
    series_id: Id | None = None  # recurring appointment
    deposit: Money | None = None  # money already paid
    price: Money | None = None
    # Optional addition within v1: how to reach the professional (notices about holds, suspension).
    professional_contact: ProfessionalContact | None = None


class BookingRescheduled(Payload):
    event_type: ClassVar[str] = "booking.rescheduled"

    booking_id: Id
    starts_at: UtcDatetime
    ends_at: UtcDatetime


class UpstreamBookingCompleted(Payload):
    """`booking.completed` as upstream reports it (the booking service re-publishes its own)."""

    event_type: ClassVar[str] = "booking.completed"

    booking_id: Id
    completed_at: UtcDatetime


class BookingCancellationRequested(Payload):
    event_type: ClassVar[str] = "booking.cancellation_requested"

    request_id: Id
    booking_id: Id
    requested_at: UtcDatetime
    actor: Actor
    channel: Channel
    reason_code: str | None = None  # practice-defined list, e.g. illness, transport, rescheduling
    reason_text: str | None = None  # at most REASON_TEXT_MAX_CHARS: checked by booking, see module doc
    scope: Scope = "this"
    fee_decision: FeeDecision = "policy"  # staff only
    chart_note: str | None = None

    @field_validator("scope", mode="before")
    @classmethod
    def _scope_default(cls, value: Any) -> Any:
        return _null_means_default(value, "this")

    @field_validator("fee_decision", mode="before")
    @classmethod
    def _fee_decision_default(cls, value: Any) -> Any:
        return _null_means_default(value, "policy")


class BookingNoShowReported(Payload):
    event_type: ClassVar[str] = "booking.no_show_reported"

    request_id: Id
    booking_id: Id
    reported_at: UtcDatetime
    actor: Actor
    party: Party
    code: NoShowCode
    fee_decision: FeeDecision = "policy"
    chart_note: str | None = None

    @field_validator("fee_decision", mode="before")
    @classmethod
    def _fee_decision_default(cls, value: Any) -> Any:
        return _null_means_default(value, "policy")


# --- upstream.practices.v1 -------------------------------------------------------------------
# Every settings object defaults to what CONTRACT.md says applies to a practice that never
# configured it, so `PracticeSettings()` is the policy of an unconfigured practice.


class ContactSettings(ContractModel):
    email: str | None = None
    phone: str | None = None
    preferred_channel: ContactChannel = "email"


class CancellationSettings(ContractModel):
    online_enabled: bool = True
    patient_cutoff_hours: int = Field(default=48, ge=0)
    late_window_hours: int = Field(default=24, ge=0)
    professional_no_show_minutes: int = Field(default=60, ge=0)
    notify_practice_on_online_cancel: bool = False


class FeeSettings(ContractModel):
    late_cancellation: Fee | None = None
    no_show: Fee | None = None
    charge_card_on_file: bool = False


class DepositSettings(ContractModel):
    timely: DepositChoice = "refund"
    late: DepositChoice = "keep"
    no_show: DepositChoice = "keep"


class WaitlistSettings(ContractModel):
    enabled: bool = False
    offer_minutes: int = Field(default=30, gt=0)


class PmsSettings(ContractModel):
    integration: PmsIntegration = "none"


class PracticeSettings(ContractModel):
    """The rules a practice configures; every part defaults as CONTRACT.md says."""

    contact: ContactSettings = ContactSettings()
    cancellation: CancellationSettings = CancellationSettings()
    fees: FeeSettings = FeeSettings()
    deposits: DepositSettings = DepositSettings()
    waitlist: WaitlistSettings = WaitlistSettings()
    pms: PmsSettings = PmsSettings()


class _PracticeIdentity(Payload):
    # A base of its own only so the wire form lists who the practice is before its settings.
    practice_id: Id
    name: str
    timezone: str = Field(min_length=1)  # IANA name, for anything shown to people
    locale: str


class PracticeConfigured(PracticeSettings, _PracticeIdentity):
    event_type: ClassVar[str] = "practice.configured"

    @property
    def settings(self) -> PracticeSettings:
        return PracticeSettings(**{name: getattr(self, name) for name in PracticeSettings.model_fields})

    @classmethod
    def defaults(cls, practice_id: str, *, name: str = "", timezone: str = "UTC", locale: str = "en") -> Self:
        """The configuration of a practice that never published one (contract defaults)."""
        return cls(practice_id=practice_id, name=name, timezone=timezone, locale=locale)


class WaitlistJoined(Payload):
    event_type: ClassVar[str] = "waitlist.joined"

    waitlist_id: Id
    practice_id: Id
    patient: Patient
    service_code: str | None = None
    practitioner_id: Id | None = None
    joined_at: UtcDatetime


# --- upstream.professionals.v1 ---------------------------------------------------------------


class ExcuseSubmitted(Payload):
    event_type: ClassVar[str] = "excuse.submitted"

    excuse_id: Id
    professional_id: Id
    booking_id: Id
    document_ref: str
    submitted_at: UtcDatetime


class ExcuseReviewed(Payload):
    event_type: ClassVar[str] = "excuse.reviewed"

    excuse_id: Id
    decision: ExcuseDecision
    reviewer_id: Id
    reviewed_at: UtcDatetime


class ScoreRecalculationRequested(Payload):
    event_type: ClassVar[str] = "score.recalculation_requested"

    professional_id: Id | None = None  # all professionals when absent


# --- billing.commands.v1 ---------------------------------------------------------------------


class ChargeAdjustmentRequested(Payload):
    event_type: ClassVar[str] = "charge.adjustment_requested"

    request_id: Id
    charge_id: Id
    actor: StaffActor
    amount: Amount | None = None  # in the charge's currency
    code: str | None = None
    code_system: CodeSystem | None = None


# --- pms-sync.acks.v1 ------------------------------------------------------------------------


class PmsSyncAcknowledged(Payload):
    event_type: ClassVar[str] = "pms.sync_acknowledged"

    sync_id: Id
    booking_id: Id
    status: AckStatus
    error: str | None = None
    external_ref: str | None = None

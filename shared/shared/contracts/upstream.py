"""Inbound events: what upstream systems, staff tools and PMS connectors publish to us.

Guarantees: a payload that parses here has every field CONTRACT.md requires, with the
contract's defaults filled in where it allows a field to be left out (`scope` "this",
`fee_decision` "policy", every practice setting). Business rules are NOT enforced here: a
`reason_text` over 255 characters parses (up to a hard cap of `REASON_TEXT_PARSE_MAX_CHARS`),
so the booking service can answer it with `invalid_request` instead of dead-lettering a request
a person is waiting on. Bounds ARE (see `.common` and `.base`): every id, text, contact, time,
amount and setting has its range, and a practice's settings their sane limits
(`CUTOFF_HOURS_MAX`, `NO_SHOW_MINUTES_MAX`, `OFFER_MINUTES_MAX`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, StringConstraints, field_validator, model_validator

from .base import AnyCurrencyAmount, ContractModel, Money, Payload, money_problem
from .common import (
    NOTE_MAX_CHARS,
    REVIEW_HOURS_MAX,
    TIER_HOURS_MAX,
    AckStatus,
    Actor,
    Channel,
    Code,
    CodeSystem,
    ContactChannel,
    DepositChoice,
    DepositDecision,
    ErrorText,
    ExcuseDecision,
    Fee,
    FeeDecision,
    Id,
    Label,
    Locale,
    Name,
    NoShowCode,
    Note,
    OptionalEmail,
    OptionalPhone,
    Party,
    Patient,
    Percent,
    PmsIntegration,
    PolicyChangesApplyTo,
    ReasonCode,
    Reference,
    Scope,
    StaffActor,
    Timezone,
    UtcDatetime,
)

REASON_TEXT_MAX_CHARS = 255  # a rule the booking service applies (invalid_request), not a parse check
# The one sentence a longer reason is refused with (invalid_request), by booking and by the policy.
REASON_TEXT_TOO_LONG = (
    f"Please shorten the reason to at most {REASON_TEXT_MAX_CHARS} characters and send the request again."
)
REASON_TEXT_PARSE_MAX_CHARS = NOTE_MAX_CHARS  # longer than this is not a request at all: dead-lettered
CUTOFF_HOURS_MAX = 720  # 30 days: the patient cutoff and the late window
NO_SHOW_MINUTES_MAX = 1440  # a day
OFFER_MINUTES_MAX = 1440
TIERS_MAX_ITEMS = 10
STANDING_WINDOW_DAYS_MAX = 3650  # ten years
STANDING_THRESHOLD_MAX = 1000


def _null_means_default(value: Any, default: str) -> Any:
    # "optional" in the contract: a producer that sends null meant "not given".
    return default if value is None else value


# --- upstream.bookings.v1 --------------------------------------------------------------------


class ProfessionalContact(ContractModel):
    """How to reach the booked professional (optional addition within v1): the notification
    service tells them about holds and a suspension by email."""

    first_name: Name | None = None
    email: OptionalEmail = None
    phone: OptionalPhone = None
    locale: Locale | None = None


class BookingScheduled(Payload):
    event_type: ClassVar[str] = "booking.scheduled"

    booking_id: Id
    practice_id: Id
    starts_at: UtcDatetime
    ends_at: UtcDatetime
    practitioner_id: Id
    service_code: Code
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
    reason_code: ReasonCode | None = None  # practice-defined list, e.g. illness, transport, rescheduling
    reason_text: Note | None = None  # at most REASON_TEXT_MAX_CHARS: checked by booking, see module doc
    scope: Scope = "this"
    fee_decision: FeeDecision = "policy"  # staff only
    chart_note: Note | None = None
    # Second release: staff choose what becomes of the deposit; it wins over the policy's rule.
    deposit_decision: DepositDecision = "policy"  # staff only

    @field_validator("scope", mode="before")
    @classmethod
    def _scope_default(cls, value: Any) -> Any:
        return _null_means_default(value, "this")

    @field_validator("deposit_decision", mode="before")
    @classmethod
    def _deposit_decision_default(cls, value: Any) -> Any:
        return _null_means_default(value, "policy")

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
    chart_note: Note | None = None

    @field_validator("fee_decision", mode="before")
    @classmethod
    def _fee_decision_default(cls, value: Any) -> Any:
        return _null_means_default(value, "policy")


class BookingArrived(Payload):
    """The patient arrived (second release): the no-show sweep leaves the booking alone."""

    event_type: ClassVar[str] = "booking.arrived"

    booking_id: Id
    arrived_at: UtcDatetime


class WaitlistOfferAccepted(Payload):
    """A waitlisted patient took the live offer of a cancelled booking's slot (second release);
    keyed by the offered booking's id, `new_booking_id` is the booking it became."""

    event_type: ClassVar[str] = "waitlist.offer_accepted"

    offer_id: Id
    waitlist_id: Id
    new_booking_id: Id
    accepted_at: UtcDatetime


# --- upstream.practices.v1 -------------------------------------------------------------------
# Every settings object defaults to what CONTRACT.md says applies to a practice that never
# configured it, so `PracticeSettings()` is the policy of an unconfigured practice.


class ContactSettings(ContractModel):
    email: OptionalEmail = None
    phone: OptionalPhone = None
    preferred_channel: ContactChannel = "email"


class CancellationSettings(ContractModel):
    online_enabled: bool = True
    patient_cutoff_hours: int = Field(default=48, ge=0, le=CUTOFF_HOURS_MAX)
    late_window_hours: int = Field(default=24, ge=0, le=CUTOFF_HOURS_MAX)
    professional_no_show_minutes: int = Field(default=60, ge=0, le=NO_SHOW_MINUTES_MAX)
    notify_practice_on_online_cancel: bool = False


class LateCancellationTier(ContractModel):
    """One fee tier (second release): a late cancellation with less than `notice_under_hours`
    of notice pays `percent` of the booking's price, or `amount` (in the flat late fee's currency)."""

    notice_under_hours: int = Field(ge=1, le=TIER_HOURS_MAX)
    percent: Percent | None = None
    amount: AnyCurrencyAmount | None = None

    @model_validator(mode="after")
    def _percent_or_amount(self) -> Self:
        if (self.percent is None) == (self.amount is None):
            raise ValueError("a fee tier has either a percent or an amount, not both or neither")
        return self


class FeeSettings(ContractModel):
    late_cancellation: Fee | None = None
    no_show: Fee | None = None
    charge_card_on_file: bool = False
    # Second release: fees wait this long as `pending_review` for staff (0: taken at once).
    review_hours: int = Field(default=0, ge=0, le=REVIEW_HOURS_MAX)
    # Second release: escalating late fees by notice; they take their code and currency (and the
    # fee of a booking without a price) from `late_cancellation`, which they therefore need.
    late_cancellation_tiers: Annotated[list[LateCancellationTier], Field(max_length=TIERS_MAX_ITEMS)] = []

    @model_validator(mode="after")
    def _tiers_fit_the_flat_fee(self) -> Self:
        if not self.late_cancellation_tiers:
            return self
        if self.late_cancellation is None:
            raise ValueError("fee tiers need the flat late_cancellation fee (its code, currency and fallback)")
        notices = [tier.notice_under_hours for tier in self.late_cancellation_tiers]
        if len(set(notices)) != len(notices):
            raise ValueError("two fee tiers have the same notice_under_hours")
        for tier in self.late_cancellation_tiers:
            if tier.amount is not None and (problem := money_problem(tier.amount, self.late_cancellation.currency)):
                raise ValueError(f"a fee tier's amount {problem}")
        return self


class DepositSettings(ContractModel):
    timely: DepositChoice = "refund"
    late: DepositChoice = "keep"
    no_show: DepositChoice = "keep"


class WaitlistSettings(ContractModel):
    enabled: bool = False
    offer_minutes: int = Field(default=30, ge=1, le=OFFER_MINUTES_MAX)


class PmsSettings(ContractModel):
    integration: PmsIntegration = "none"


class StandingSettings(ContractModel):
    """Patient standing (second release): no-shows and late cancellations counted per practice."""

    enabled: bool = False
    window_days: int = Field(default=365, ge=1, le=STANDING_WINDOW_DAYS_MAX)
    forgive_first: bool = True
    deposit_required_after: int = Field(default=2, ge=1, le=STANDING_THRESHOLD_MAX)
    prepayment_required_after: int = Field(default=3, ge=1, le=STANDING_THRESHOLD_MAX)
    online_booking_blocked_after: int = Field(default=4, ge=1, le=STANDING_THRESHOLD_MAX)

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> Self:
        if not self.deposit_required_after <= self.prepayment_required_after <= self.online_booking_blocked_after:
            raise ValueError(
                "standing thresholds must not decrease: deposit_required_after <= prepayment_required_after"
                " <= online_booking_blocked_after"
            )
        return self


class NoShowSweepSettings(ContractModel):
    """Suspected no-shows (second release): reported at start + grace when nothing happened."""

    enabled: bool = False
    grace_minutes: int = Field(default=15, ge=0, le=NO_SHOW_MINUTES_MAX)


class TurnawaySettings(ContractModel):
    """What a marketplace office owes for cancelling a booked professional late (second release)."""

    office_late_window_hours: int = Field(default=24, ge=0, le=CUTOFF_HOURS_MAX)
    percent_of_shift: int = Field(default=50, ge=0, le=100)  # of the booking's price


class PracticeSettings(ContractModel):
    """The rules a practice configures; every part defaults as CONTRACT.md says."""

    contact: ContactSettings = ContactSettings()
    cancellation: CancellationSettings = CancellationSettings()
    fees: FeeSettings = FeeSettings()
    deposits: DepositSettings = DepositSettings()
    waitlist: WaitlistSettings = WaitlistSettings()
    pms: PmsSettings = PmsSettings()
    # Second release (issue 17)
    policy_changes_apply_to: PolicyChangesApplyTo = "new_bookings"
    standing: StandingSettings = StandingSettings()
    no_show_sweep: NoShowSweepSettings = NoShowSweepSettings()
    turnaway: TurnawaySettings = TurnawaySettings()


class _PracticeIdentity(Payload):
    # A base of its own only so the wire form lists who the practice is before its settings.
    practice_id: Id
    name: Name
    timezone: Timezone  # IANA name, for anything shown to people
    locale: Locale


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
    service_code: Code | None = None
    practitioner_id: Id | None = None
    joined_at: UtcDatetime


# --- upstream.professionals.v1 ---------------------------------------------------------------


class ExcuseSubmitted(Payload):
    event_type: ClassVar[str] = "excuse.submitted"

    excuse_id: Id
    professional_id: Id
    booking_id: Id
    document_ref: Reference
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


class ProfessionalReinstated(Payload):
    """A reviewer ends a professional's suspension (second release)."""

    event_type: ClassVar[str] = "professional.reinstated"

    professional_id: Id
    reviewer_id: Id
    reinstated_at: UtcDatetime
    note: Note | None = None


# --- billing.commands.v1 ---------------------------------------------------------------------


class ChargeAdjustmentRequested(Payload):
    event_type: ClassVar[str] = "charge.adjustment_requested"

    request_id: Id
    charge_id: Id
    actor: StaffActor
    amount: AnyCurrencyAmount | None = None  # in the charge's currency: billing checks it against that
    code: Code | None = None
    code_system: CodeSystem | None = None


ReviewDecision = Literal["approve", "waive", "edit"]


class ChargeReviewDecided(Payload):
    """Staff's decision on a fee raised `pending_review` (second release); the same roles as
    an adjustment. `edit` carries the new amount and/or code."""

    event_type: ClassVar[str] = "charge.review_decided"

    request_id: Id
    charge_id: Id
    actor: StaffActor
    decision: ReviewDecision
    amount: AnyCurrencyAmount | None = None  # in the charge's currency: billing checks it against that
    code: Code | None = None
    code_system: CodeSystem | None = None
    note: Note | None = None


# --- upstream.patients.v1 (second release: cards on file) -------------------------------------

CardGateway = Literal["stripe", "sandbox"]
Last4 = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}$")]


class PatientCardRegistered(Payload):
    """The patient's card on file at one practice (it replaces any earlier one there)."""

    event_type: ClassVar[str] = "patient.card_registered"

    patient_id: Id
    practice_id: Id
    gateway: CardGateway
    customer_ref: Reference  # the processor's customer (Stripe: cus_…)
    payment_method_ref: Reference  # the saved payment method (Stripe: pm_…)
    registered_at: UtcDatetime
    brand: Label | None = None
    last4: Last4 | None = None


class PatientCardRemoved(Payload):
    event_type: ClassVar[str] = "patient.card_removed"

    patient_id: Id
    practice_id: Id
    payment_method_ref: Reference
    removed_at: UtcDatetime


# --- pms-sync.acks.v1 ------------------------------------------------------------------------


class PmsSyncAcknowledged(Payload):
    event_type: ClassVar[str] = "pms.sync_acknowledged"

    sync_id: Id
    booking_id: Id
    status: AckStatus
    error: ErrorText | None = None
    external_ref: Reference | None = None

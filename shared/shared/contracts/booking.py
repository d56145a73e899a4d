"""What the booking service publishes: `booking.events.v1` and, internally, `policy.requests.v1`.

Guarantees: every outbound booking event carries the fields CONTRACT.md lists; a rejection
always says which of the contract's reasons applies and one sentence a person can act on; an
assessment request carries everything the cancellation policy needs to decide without reading
any other booking state (the booking snapshot and the request as it was made); the practice's
settings are the cancellation policy's own, versioned there.
`booking.completed` here is the booking service's own event; the inbound one of the same type
string is `upstream.UpstreamBookingCompleted` (registries are per topic for that reason).
"""

from __future__ import annotations

from typing import ClassVar, Literal, Self

from pydantic import Field, model_validator

from .base import ContractModel, Money, Payload
from .common import (
    Actor,
    Channel,
    Classification,
    Code,
    Decision,
    DepositDecision,
    FeeDecision,
    Id,
    IdList,
    Message,
    NoShowCode,
    Note,
    Party,
    ReasonCode,
    RejectionReason,
    Scope,
    StatusLabel,
    UtcDatetime,
)

NO_SHOW_GRACE_MINUTES_MAX = 1440  # as the practice setting's bound

# --- booking.events.v1 -----------------------------------------------------------------------


class BookingCancelled(Payload):
    event_type: ClassVar[str] = "booking.cancelled"

    booking_id: Id
    request_id: Id
    practice_id: Id
    patient_id: Id
    professional_id: Id | None = None
    practitioner_id: Id
    service_code: Code
    starts_at: UtcDatetime
    ends_at: UtcDatetime
    cancelled_at: UtcDatetime
    actor: Actor
    channel: Channel
    status_label: StatusLabel  # "Cancelled online" when a patient cancelled through the portal
    reason_code: ReasonCode | None = None
    reason_text: Note | None = None
    classification: Classification
    decision: Decision
    series_booking_ids: IdList = []  # other occurrences cancelled with this one
    deposit: Money | None = None  # paid ahead: billing refunds or keeps it per decision.deposit_action


class BookingCancellationRejected(Payload):
    event_type: ClassVar[str] = "booking.cancellation_rejected"

    booking_id: Id
    request_id: Id
    reason: RejectionReason
    message: Message  # one sentence a person can act on


class BookingNoShowRecorded(Payload):
    event_type: ClassVar[str] = "booking.no_show_recorded"

    booking_id: Id
    request_id: Id
    practice_id: Id
    patient_id: Id
    professional_id: Id | None = None
    party: Party
    code: NoShowCode
    starts_at: UtcDatetime
    recorded_at: UtcDatetime
    decision: Decision
    deposit: Money | None = None


class BookingNoShowRejected(Payload):
    event_type: ClassVar[str] = "booking.no_show_rejected"

    booking_id: Id
    request_id: Id
    reason: RejectionReason
    message: Message


class BookingCompleted(Payload):
    event_type: ClassVar[str] = "booking.completed"

    booking_id: Id
    completed_at: UtcDatetime
    professional_id: Id | None = None


class BookingSlotReleased(Payload):
    """The slot is open for online rebooking."""

    event_type: ClassVar[str] = "booking.slot_released"

    booking_id: Id
    practice_id: Id
    starts_at: UtcDatetime
    ends_at: UtcDatetime
    practitioner_id: Id
    service_code: Code


class BookingSlotOffered(Payload):
    event_type: ClassVar[str] = "booking.slot_offered"

    offer_id: Id
    booking_id: Id
    waitlist_id: Id
    expires_at: UtcDatetime


class BookingNoShowSuspected(Payload):
    """Second release: nothing (arrival, completion, cancellation, no-show) happened to a booking by
    its start + the practice's grace; staff confirm with `booking.no_show_reported`."""

    event_type: ClassVar[str] = "booking.no_show_suspected"

    booking_id: Id
    practice_id: Id
    starts_at: UtcDatetime
    grace_minutes: int = Field(ge=0, le=NO_SHOW_GRACE_MINUTES_MAX)


class BookingSlotFilled(Payload):
    """Second release: the live waitlist offer was accepted; no further offer, no release follows."""

    event_type: ClassVar[str] = "booking.slot_filled"

    offer_id: Id
    booking_id: Id
    new_booking_id: Id
    waitlist_id: Id


# --- policy.requests.v1 (internal: booking -> cancellation-policy) ---------------------------

BookingStatus = Literal["scheduled", "cancelled", "completed", "no_show"]


class BookingSnapshot(ContractModel):
    """The booking as the booking service held it when the request arrived."""

    starts_at: UtcDatetime
    ends_at: UtcDatetime
    status: BookingStatus
    practitioner_id: Id | None = None
    service_code: Code | None = None
    professional_id: Id | None = None
    series_id: Id | None = None
    patient_portal_account: bool
    patient_card_on_file: bool
    deposit: Money | None = None
    price: Money | None = None
    # Whose booking (internal topic, second release): the policy looks up the patient's card
    # registered at the practice (upstream.patients.v1), which wins over `patient_card_on_file`.
    patient_id: Id | None = None


class CancellationAssessmentRequested(Payload):
    """Ask the cancellation policy to decide one cancellation or no-show request.

    `requested_at` is the request's own time (`requested_at` of a cancellation, `reported_at`
    of a no-show): the policy decides by it, never by the time it processes this message.
    When the request claimed a time outside the tolerance of its Kafka record's timestamp,
    `requested_at` is the record's time and `claimed_at` the time it claimed
    (docs/rules.md, "Time and trust"), and the decision's explanation says so.
    """

    event_type: ClassVar[str] = "cancellation.assessment_requested"

    booking_id: Id
    request_id: Id
    practice_id: Id
    kind: Literal["cancellation", "no_show"]
    booking: BookingSnapshot
    requested_at: UtcDatetime
    actor: Actor
    channel: Channel | None = None  # cancellations only
    reason_code: ReasonCode | None = None
    reason_text: Note | None = None
    scope: Scope = "this"
    fee_decision: FeeDecision = "policy"
    deposit_decision: DepositDecision = "policy"  # cancellations by staff (second release)
    party: Party | None = None  # no-shows only
    code: NoShowCode | None = None  # no-shows only
    claimed_at: UtcDatetime | None = None  # set only when the claimed time was not trusted

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> Self:
        if self.kind == "cancellation" and self.channel is None:
            raise ValueError("a cancellation assessment needs the request's channel")
        if self.kind == "no_show" and (self.party is None or self.code is None):
            raise ValueError("a no-show assessment needs the report's party and code")
        return self

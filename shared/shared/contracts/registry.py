"""Which event types may appear on which topic, and the model that reads each.

Guarantees: every topic of `shared.topics.ALL_TOPICS` has a registry; within a topic an event
type string names exactly one model. Registries are per topic because one type string can mean
two things: `booking.completed` from upstream (upstream.bookings.v1) is not the booking
service's `booking.completed` (booking.events.v1). Treat the dicts as read-only.
"""

from __future__ import annotations

from .. import topics
from . import billing, booking, deadletter, notification, pms_sync, policy, scoring, upstream
from .base import Payload


def _by_type(*models: type[Payload]) -> dict[str, type[Payload]]:
    registry: dict[str, type[Payload]] = {}
    for model in models:
        if model.event_type in registry:
            raise RuntimeError(f"two models for {model.event_type!r} on one topic")
        registry[model.event_type] = model
    return registry


_PMS_COMMANDS = _by_type(pms_sync.PmsCancelBooking, pms_sync.PmsRecordNoShow, pms_sync.PmsUpdateFee)
_DEAD_LETTERS = _by_type(deadletter.MessageDeadLettered)

TOPIC_EVENTS: dict[str, dict[str, type[Payload]]] = {
    topics.UPSTREAM_BOOKINGS: _by_type(
        upstream.BookingScheduled,
        upstream.BookingRescheduled,
        upstream.UpstreamBookingCompleted,
        upstream.BookingCancellationRequested,
        upstream.BookingNoShowReported,
        upstream.BookingArrived,
        upstream.WaitlistOfferAccepted,
    ),
    topics.UPSTREAM_PRACTICES: _by_type(upstream.PracticeConfigured, upstream.WaitlistJoined),
    topics.UPSTREAM_PROFESSIONALS: _by_type(
        upstream.ExcuseSubmitted,
        upstream.ExcuseReviewed,
        upstream.ScoreRecalculationRequested,
        upstream.ProfessionalReinstated,
    ),
    topics.BOOKING_EVENTS: _by_type(
        booking.BookingCancelled,
        booking.BookingCancellationRejected,
        booking.BookingNoShowRecorded,
        booking.BookingNoShowRejected,
        booking.BookingCompleted,
        booking.BookingSlotReleased,
        booking.BookingSlotOffered,
        booking.BookingNoShowSuspected,
        booking.BookingSlotFilled,
    ),
    topics.POLICY_REQUESTS: _by_type(booking.CancellationAssessmentRequested),
    topics.POLICY_DECISIONS: _by_type(policy.CancellationAssessed),
    topics.PRACTICE_EVENTS: _by_type(policy.PracticeConfigurationAccepted, policy.PracticeConfigurationRejected),
    topics.SCORING_EVENTS: _by_type(
        scoring.ScoreChanged,
        scoring.HoldPlaced,
        scoring.HoldLifted,
        scoring.AccountSuspended,
        scoring.PatientStandingChanged,
        scoring.OfficeScoreChanged,
        scoring.AccountReinstated,
    ),
    topics.UPSTREAM_PATIENTS: _by_type(upstream.PatientCardRegistered, upstream.PatientCardRemoved),
    topics.BILLING_COMMANDS: _by_type(upstream.ChargeAdjustmentRequested, upstream.ChargeReviewDecided),
    topics.BILLING_EVENTS: _by_type(
        billing.ChargeCreated,
        billing.PaymentCaptured,
        billing.PaymentFailed,
        billing.DepositRefunded,
        billing.DepositKept,
        billing.CreditNoteIssued,
        billing.ChargeAdjusted,
        billing.ChargeAdjustmentRejected,
        billing.ChargeWaived,
        billing.ChargeReviewRejected,
        billing.PaymentRefunded,
        billing.TurnawayPayOwed,
    ),
    topics.NOTIFICATION_EVENTS: _by_type(notification.NotificationSent, notification.NotificationFailed),
    topics.PMS_SYNC_ACKS: _by_type(upstream.PmsSyncAcknowledged),
    topics.PMS_SYNC_EVENTS: _by_type(
        pms_sync.PmsSyncCompleted,
        pms_sync.PmsSyncFailed,
        pms_sync.PmsManualUpdateRequired,
    ),
    **{topic: _PMS_COMMANDS for topic in topics.PMS_INTEGRATION_TOPICS.values()},
    **{topics.dead_letter_topic(service): _DEAD_LETTERS for service in topics.SERVICES},
}

ALL_EVENT_TYPES: set[str] = {event_type for registry in TOPIC_EVENTS.values() for event_type in registry}


def models_for(topic: str) -> dict[str, type[Payload]]:
    """The event types a consumer of `topic` may receive, each with the model that reads it."""
    try:
        return TOPIC_EVENTS[topic]
    except KeyError:
        raise KeyError(
            f"no event registry for topic {topic!r}: it is not a contract topic (see shared.topics.ALL_TOPICS)"
        ) from None

"""The booking service: the booking's state machine, requests to the policy, series, the
waitlist and slot release, suspension, the audit trail, reports and the read API.

Consumes `upstream.bookings.v1`, `upstream.practices.v1` (waitlist settings and entries),
`policy.decisions.v1` and `scoring.events.v1` (suspensions and reinstatements); publishes
`booking.events.v1` and, internally, `policy.requests.v1`. Second release (attendance.py):
arrivals, the no-show sweep, waitlist offers accepted.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from shared.contracts.booking import (
    BookingCancellationRejected,
    BookingCancelled,
    BookingCompleted,
    BookingNoShowRecorded,
    BookingNoShowRejected,
    BookingNoShowSuspected,
    BookingSlotFilled,
    BookingSlotOffered,
    BookingSlotReleased,
    CancellationAssessmentRequested,
)
from shared.service import ServiceDefinition
from shared.topics import (
    BOOKING_EVENTS,
    POLICY_DECISIONS,
    POLICY_REQUESTS,
    SCORING_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
)

from . import api, attendance, domain, handlers, repository
from .settings import BookingSettings


def _deps(settings: BookingSettings) -> handlers.BookingDeps:
    return handlers.BookingDeps(
        time_trust=domain.TimeTrust(
            before=timedelta(seconds=settings.request_time_trusted_before_seconds),
            after=timedelta(seconds=settings.request_time_trusted_after_seconds),
        ),
        repository=repository,
    )


def definition(settings: BookingSettings | None = None) -> ServiceDefinition:
    settings = settings or BookingSettings()
    return ServiceDefinition(
        name=settings.service_name,
        description="Who may cancel and when: the booking state machine, series, no-shows, audit trail and reports.",
        settings=settings,
        migrations=Path(__file__).parent.parent / "migrations",
        consumes={
            UPSTREAM_BOOKINGS: {
                "booking.scheduled": handlers.schedule_booking,
                "booking.rescheduled": handlers.reschedule_booking,
                "booking.completed": handlers.complete_booking,
                "booking.cancellation_requested": handlers.request_cancellation,
                "booking.no_show_reported": handlers.report_no_show,
                # second release
                "booking.arrived": attendance.record_arrival,
                "waitlist.offer_accepted": attendance.fill_slot,
            },
            POLICY_DECISIONS: {"cancellation.assessed": handlers.apply_decision},
            UPSTREAM_PRACTICES: {
                "practice.configured": attendance.configure_practice,  # waitlist, then the sweep
                "waitlist.joined": handlers.join_waitlist,
            },
            SCORING_EVENTS: {
                "account.suspended": handlers.cancel_for_suspension,
                "account.reinstated": attendance.end_suspension,
            },
        },
        publishes={
            BOOKING_EVENTS: [
                BookingCancelled,
                BookingCancellationRejected,
                BookingNoShowRecorded,
                BookingNoShowRejected,
                BookingCompleted,
                BookingSlotReleased,
                BookingSlotOffered,
                BookingNoShowSuspected,
                BookingSlotFilled,
            ],
            POLICY_REQUESTS: [CancellationAssessmentRequested],
        },
        http_routes=api.router,
        background=[handlers.offer_expiry(settings), attendance.no_show_sweep(settings)],
        make_deps=lambda: _deps(settings),
        answer_invalid={
            "booking.cancellation_requested": handlers.reject_unreadable("cancellation"),
            "booking.no_show_reported": handlers.reject_unreadable("no_show"),
        },
    )

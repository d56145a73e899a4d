"""The notification service: the contact directory, templates per locale, email (SMTP) and SMS
(provider HTTP API), the delivery log and its retries.

Consumes `upstream.bookings.v1` (patients' and professionals' contacts, who asked for a
cancellation), `upstream.practices.v1` (practices' contacts, channel, timezone, locale; waitlisted
patients), `booking.events.v1` (cancellations, rejections, no-shows, slot offers),
`billing.events.v1` (no-show charges and their payment, late-cancellation fees final after
review, refunds), `scoring.events.v1` (holds, suspension)
and `pms-sync.events.v1` (manual PMS updates); publishes `notification.sent` / `notification.failed` on `notification.events.v1`. Personal
data stays in this service's schema: never in logs, never in published events, never in the
read API.
"""

from __future__ import annotations

from pathlib import Path

from shared.contracts.notification import NotificationFailed, NotificationSent
from shared.service import ServiceDefinition
from shared.topics import (
    BILLING_EVENTS,
    BOOKING_EVENTS,
    NOTIFICATION_EVENTS,
    PMS_SYNC_EVENTS,
    SCORING_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
)

from . import api, handlers, notices
from .delivery import Deps, sender
from .settings import NotificationSettings


async def _close_deps(deps: Deps) -> None:
    await deps.close()


def definition(settings: NotificationSettings | None = None) -> ServiceDefinition:
    settings = settings or NotificationSettings()
    return ServiceDefinition(
        name=settings.service_name,
        description=(
            "Tells patients, waitlisted patients, practices and professionals what happened, by email and SMS,"
            " in their language and timezone."
        ),
        settings=settings,
        migrations=Path(__file__).parent.parent / "migrations",
        consumes={
            UPSTREAM_BOOKINGS: {
                "booking.scheduled": handlers.remember_patient,
                "booking.rescheduled": handlers.reschedule_booking,
                "booking.cancellation_requested": handlers.remember_request,
            },
            UPSTREAM_PRACTICES: {
                "practice.configured": handlers.configure_practice,
                "waitlist.joined": handlers.remember_waitlist_entry,
            },
            BOOKING_EVENTS: {
                # who hears of it, then (second release) the professional of turn-away pay owed
                "booking.cancelled": notices.notify_cancellation,
                "booking.cancellation_rejected": handlers.notify_rejection,
                "booking.no_show_recorded": handlers.note_no_show,
                "booking.slot_offered": handlers.notify_slot_offer,
                "booking.no_show_suspected": notices.notify_suspected_no_show,
            },
            BILLING_EVENTS: {
                "charge.created": handlers.note_charge,
                "payment.captured": handlers.note_payment,
                "payment.failed": handlers.note_payment,
                "payment.refunded": handlers.tell_refund,
            },
            SCORING_EVENTS: {
                "hold.placed": handlers.notify_hold,
                "account.suspended": handlers.notify_suspension,
                "account.reinstated": notices.notify_reinstatement,
                "patient.standing_changed": notices.notify_standing_change,
            },
            PMS_SYNC_EVENTS: {"pms.manual_update_required": handlers.notify_manual_update},
        },
        publishes={NOTIFICATION_EVENTS: [NotificationSent, NotificationFailed]},
        make_deps=lambda: handlers.NotificationDeps.build(settings),
        close_deps=_close_deps,
        background=[sender(settings)],
        http_routes=api.router,
    )

"""The notification service: the contact directory, templates per locale, email (SMTP) and SMS
(provider HTTP API), the delivery log and its retries.

Consumes `upstream.bookings.v1` (patients' contacts, who asked for a cancellation),
`upstream.practices.v1` (practices' contacts, channel, timezone, locale) and `booking.events.v1`;
publishes `notification.sent` / `notification.failed` on `notification.events.v1`. Personal
data stays in this service's schema: never in logs, never in published events, never in the
read API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.contracts.notification import NotificationFailed, NotificationSent
from shared.http import BadRequest, json_route
from shared.service import Service, ServiceDefinition
from shared.topics import BOOKING_EVENTS, NOTIFICATION_EVENTS, UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES

from . import handlers, repository
from .delivery import Deps, send_deliveries
from .settings import NotificationSettings


def _routes(service: Service) -> list[tuple[str, Any]]:
    async def notifications(query: dict[str, str]) -> dict[str, Any]:
        """The deliveries of one booking with their status (no addresses, no text): `?booking_id=`."""
        if "booking_id" not in query:
            raise BadRequest("booking_id is required")
        rows = await repository.deliveries_for_booking(service.pool, query["booking_id"])
        return {"booking_id": query["booking_id"], "items": [dict(r) for r in rows]}

    return [("/notifications", json_route(notifications))]


async def _make_deps(service: Service) -> Deps:
    return Deps.build(service.settings)  # type: ignore[arg-type]


async def _close_deps(deps: Deps) -> None:
    await deps.close()


def definition(settings: NotificationSettings | None = None) -> ServiceDefinition:
    settings = settings or NotificationSettings()
    return ServiceDefinition(
        name=settings.service_name,
        description="Tells patients and practices what happened, by email and SMS, in their language and timezone.",
        settings=settings,
        migrations=Path(__file__).parent.parent / "migrations",
        consumes={
            UPSTREAM_BOOKINGS: {
                "booking.scheduled": handlers.remember_patient,
                "booking.rescheduled": handlers.reschedule_booking,
                "booking.cancellation_requested": handlers.remember_request,
            },
            UPSTREAM_PRACTICES: {"practice.configured": handlers.configure_practice},
            BOOKING_EVENTS: {
                "booking.cancelled": handlers.notify_cancellation,
                "booking.cancellation_rejected": handlers.notify_rejection,
            },
        },
        publishes={NOTIFICATION_EVENTS: [NotificationSent, NotificationFailed]},
        make_deps=_make_deps,
        close_deps=_close_deps,
        background=[send_deliveries],
        http_routes=_routes,
    )

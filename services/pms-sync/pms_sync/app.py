"""The pms-sync service: the per-practice integration registry, the outbound sync topics, acks,
retries and manual-update requests.

Consumes `upstream.practices.v1` (pms.integration), `upstream.bookings.v1` (the chart note and
reporter of each request), `booking.events.v1` and `pms-sync.acks.v1`; publishes
`pms.cancel_booking` / `pms.record_no_show` on `pms-sync.<integration>.v1` and the outcomes
on `pms-sync.events.v1`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.contracts.pms_sync import (
    PmsCancelBooking,
    PmsManualUpdateRequired,
    PmsRecordNoShow,
    PmsSyncCompleted,
    PmsSyncFailed,
)
from shared.http import page_args, required
from shared.service import Runtime, ServiceDefinition
from shared.topics import (
    BOOKING_EVENTS,
    PMS_INTEGRATION_TOPICS,
    PMS_SYNC_ACKS,
    PMS_SYNC_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
)

from . import handlers, repository
from .scheduler import overdue_syncs
from .settings import PmsSyncSettings


def _routes(service: Runtime) -> list[tuple[str, Any]]:
    async def syncs(query: dict[str, str]) -> dict[str, Any]:
        """Every sync of one booking with its status and attempts: `?booking_id=`."""
        required(query, "booking_id")
        rows = await repository.syncs_for_booking(service.pool, query["booking_id"])
        return {"booking_id": query["booking_id"], "items": [dict(r) for r in rows]}

    async def manual_updates(query: dict[str, str]) -> dict[str, Any]:
        """What one practice must change in its PMS by hand, newest first: `?practice_id=`, paginated."""
        required(query, "practice_id")
        limit, offset = page_args(query)
        rows = await repository.manual_updates_for_practice(service.pool, query["practice_id"], limit, offset)
        return {
            "practice_id": query["practice_id"],
            "items": [dict(r) for r in rows],
            "page_size": limit,
            "offset": offset,
        }

    return [("/syncs", syncs), ("/manual-updates", manual_updates)]


def definition(settings: PmsSyncSettings | None = None) -> ServiceDefinition:
    settings = settings or PmsSyncSettings()
    return ServiceDefinition(
        name=settings.service_name,
        description="Keeps each practice's PMS in step: sync commands per integration, acks, retries, manual-update alerts.",
        settings=settings,
        migrations=Path(__file__).parent.parent / "migrations",
        consumes={
            UPSTREAM_PRACTICES: {"practice.configured": handlers.configure_practice},
            UPSTREAM_BOOKINGS: {
                "booking.cancellation_requested": handlers.remember_cancellation_request,
                "booking.no_show_reported": handlers.remember_no_show_report,
            },
            BOOKING_EVENTS: {
                "booking.cancelled": handlers.sync_cancellation,
                "booking.no_show_recorded": handlers.sync_no_show,
            },
            PMS_SYNC_ACKS: {"pms.sync_acknowledged": handlers.acknowledge_sync},
        },
        publishes={
            **{topic: [PmsCancelBooking, PmsRecordNoShow] for topic in PMS_INTEGRATION_TOPICS.values()},
            PMS_SYNC_EVENTS: [PmsSyncCompleted, PmsSyncFailed, PmsManualUpdateRequired],
        },
        make_deps=lambda: handlers.PmsSyncDeps(settings=settings, repository=repository),
        background=[overdue_syncs(settings)],
        http_routes=_routes,
    )

"""The pms-sync service: the per-practice integration registry, the outbound sync topics, acks,
retries and manual-update requests.

Consumes `upstream.practices.v1` (pms.integration), `upstream.bookings.v1` (the chart note and
reporter of each request), `booking.events.v1`, `pms-sync.acks.v1` and `billing.events.v1`
(fees changed after the fact); publishes `pms.cancel_booking` / `pms.record_no_show` /
`pms.update_fee` on `pms-sync.<integration>.v1` and the outcomes on `pms-sync.events.v1`.
"""

from __future__ import annotations

from pathlib import Path

from shared.contracts.pms_sync import (
    PmsCancelBooking,
    PmsManualUpdateRequired,
    PmsRecordNoShow,
    PmsSyncCompleted,
    PmsSyncFailed,
    PmsUpdateFee,
)
from shared.db import Connection
from shared.metrics import PMS_BACKLOG, PMS_BACKLOG_OLDEST_SECONDS
from shared.service import ServiceDefinition
from shared.topics import (
    BILLING_EVENTS,
    BOOKING_EVENTS,
    PMS_INTEGRATION_TOPICS,
    PMS_SYNC_ACKS,
    PMS_SYNC_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
)

from . import api, fees, handlers, repository
from .scheduler import overdue_syncs
from .settings import PmsSyncSettings


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
            BILLING_EVENTS: {
                "charge.created": fees.note_charge_created,
                "charge.adjusted": fees.note_charge_adjusted,
                "charge.waived": fees.note_charge_waived,
            },
        },
        publishes={
            **{topic: [PmsCancelBooking, PmsRecordNoShow, PmsUpdateFee] for topic in PMS_INTEGRATION_TOPICS.values()},
            PMS_SYNC_EVENTS: [PmsSyncCompleted, PmsSyncFailed, PmsManualUpdateRequired],
        },
        make_deps=lambda: handlers.PmsSyncDeps(settings=settings, repository=repository),
        background=[overdue_syncs(settings)],
        http_routes=api.router,
        scrape_gauges=[pms_backlog],
    )


async def pms_backlog(conn: Connection, service: str) -> None:
    """At each scrape: the syncs no PMS has acknowledged yet, per integration (0 for one with
    none, so an alert sees it fall), and the oldest one's age."""
    rows = {row["integration"]: row for row in await repository.open_syncs(conn)}
    for integration in PMS_INTEGRATION_TOPICS:
        row = rows.get(integration)
        PMS_BACKLOG.labels(service, integration).set(row["open"] if row else 0)
    oldest = max((float(row["oldest_seconds"]) for row in rows.values()), default=0.0)
    PMS_BACKLOG_OLDEST_SECONDS.labels(service).set(oldest)

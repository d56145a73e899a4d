"""The booking service: the booking's state machine, requests to the policy, series, the
waitlist and slot release, suspension, the audit trail, reports and the read API.

Consumes `upstream.bookings.v1`, `upstream.practices.v1` (waitlist settings and entries),
`policy.decisions.v1` and `scoring.events.v1` (suspensions); publishes `booking.events.v1` and,
internally, `policy.requests.v1`.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from shared.contracts.booking import (
    BookingCancellationRejected,
    BookingCancelled,
    BookingCompleted,
    BookingNoShowRecorded,
    BookingNoShowRejected,
    BookingSlotOffered,
    BookingSlotReleased,
    CancellationAssessmentRequested,
)
from shared.http import BadRequest, page_args, required
from shared.service import Runtime, ServiceDefinition
from shared.topics import (
    BOOKING_EVENTS,
    POLICY_DECISIONS,
    POLICY_REQUESTS,
    SCORING_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
)

from . import domain, handlers, repository
from .settings import BookingSettings


def _time(query: dict[str, str], name: str) -> datetime | None:
    if name not in query:
        return None
    try:
        return datetime.fromisoformat(query[name])
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time, e.g. 2026-11-21T09:00:00Z") from None


def _routes(service: Runtime) -> list[tuple[str, Any]]:
    async def list_bookings(query: dict[str, str]) -> dict[str, Any]:
        """Bookings by `practice_id`, `status`, `practitioner_id`, `from`/`to` (start time), paginated."""
        limit, offset = page_args(query)
        rows = await repository.list_bookings(
            service.pool,
            practice_id=query.get("practice_id"),
            status=query.get("status"),
            practitioner_id=query.get("practitioner_id"),
            starts_from=_time(query, "from"),
            starts_before=_time(query, "to"),
            limit=limit,
            offset=offset,
        )
        return {"items": [dict(r) for r in rows], "page_size": limit, "offset": offset}

    async def one_booking(query: dict[str, str]) -> dict[str, Any]:
        """One booking with its full audit trail: `?booking_id=`."""
        required(query, "booking_id")
        booking = await repository.get_booking(service.pool, query["booking_id"])
        if booking is None:
            raise BadRequest(f"no booking {query['booking_id']}")
        trail = await repository.audit_trail(service.pool, query["booking_id"])
        return {
            "booking": dict(booking),
            "audit_trail": [
                {**dict(r), "actor": json.loads(r["actor"]) if r["actor"] else None, "detail": json.loads(r["detail"])}
                for r in trail
            ],
        }

    async def cancellation_report(query: dict[str, str]) -> dict[str, Any]:
        """Cancellation and no-show rates over a period (`from`, `to`: start times), grouped by
        `group_by` = practice | practitioner | service, optionally for one `practice_id`."""
        group_by = query.get("group_by", "practice")
        if group_by not in repository.REPORT_GROUPS:
            raise BadRequest("group_by is one of practice, practitioner, service")
        starts_from, starts_before = _time(query, "from"), _time(query, "to")
        if starts_from is None or starts_before is None:
            raise BadRequest("from and to are required (the period, by appointment start time)")
        rows = await repository.report(
            service.pool,
            group_by=group_by,
            practice_id=query.get("practice_id"),
            starts_from=starts_from,
            starts_before=starts_before,
        )
        groups = []
        for r in rows:
            counts = dict(r)
            counts |= {
                "cancellation_rate": domain.rate(r["cancelled"], r["bookings"]),
                "no_show_rate": domain.rate(r["no_shows"], r["bookings"]),
                "late_share_of_cancellations": domain.rate(r["late"], r["cancelled"]),
                "timely_share_of_cancellations": domain.rate(r["timely"], r["cancelled"]),
            }
            groups.append(counts)
        return {"group_by": group_by, "from": starts_from, "to": starts_before, "groups": groups}

    return [
        ("/bookings", list_bookings),
        ("/booking", one_booking),
        ("/reports/cancellations", cancellation_report),
    ]


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
            },
            POLICY_DECISIONS: {"cancellation.assessed": handlers.apply_decision},
            UPSTREAM_PRACTICES: {
                "practice.configured": handlers.configure_practice,
                "waitlist.joined": handlers.join_waitlist,
            },
            SCORING_EVENTS: {"account.suspended": handlers.cancel_for_suspension},
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
            ],
            POLICY_REQUESTS: [CancellationAssessmentRequested],
        },
        http_routes=_routes,
        background=[handlers.offer_expiry(settings)],
        make_deps=lambda: _deps(settings),
        answer_invalid={
            "booking.cancellation_requested": handlers.reject_unreadable("cancellation"),
            "booking.no_show_reported": handlers.reject_unreadable("no_show"),
        },
    )

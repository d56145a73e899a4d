"""booking's read API: bookings with their audit trail, and cancellation reports.

Every route needs a bearer token (shared.auth) and shows only the token's practices (`ops`:
every practice); another practice's booking answers 404 like one that does not exist.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query

from shared.auth import Principal, authenticated
from shared.contracts.common import UtcDatetime
from shared.http import Page, PageOf, PathId, QueryId, View, not_found
from shared.service import Runtime, runtime_of

from . import domain, repository

router = APIRouter(tags=["bookings"])

Status = Literal["scheduled", "cancelled", "completed", "no_show"]
GroupBy = Literal["practice", "practitioner", "service"]
MAX_REPORT_DAYS = 400


class Booking(View):
    booking_id: str
    practice_id: str
    practitioner_id: str
    service_code: str
    starts_at: datetime
    ends_at: datetime
    patient_id: str
    professional_id: str | None
    series_id: str | None
    status: str
    status_label: str | None
    classification: str | None
    closed_at: datetime | None
    deposit_amount: Decimal | None
    deposit_currency: str | None
    price_amount: Decimal | None
    price_currency: str | None


class AuditEntry(View):
    seq: int
    at: datetime
    action: str
    actor: dict[str, Any] | None
    channel: str | None
    request_id: str | None
    reason: str | None
    policy_version: str | None
    detail: dict[str, Any]


class BookingWithTrail(Booking):
    audit_trail: list[AuditEntry]


class ReportGroup(View):
    practice_id: str
    key: str | None
    bookings: int
    cancelled: int
    timely: int
    late: int
    cancelled_as_no_show: int
    no_shows: int
    completed: int
    cancellation_rate: float | None
    no_show_rate: float | None
    late_share_of_cancellations: float | None
    timely_share_of_cancellations: float | None


class Report(View):
    group_by: GroupBy
    starts_from: datetime
    starts_before: datetime
    groups: list[ReportGroup]


Caller = Annotated[Principal, Depends(authenticated)]
Service = Annotated[Runtime, Depends(runtime_of)]


@router.get("/bookings", response_model=PageOf[Booking])
async def list_bookings(
    caller: Caller,
    service: Service,
    page: Annotated[Page, Depends()],
    practice_id: QueryId = None,
    status: Status | None = None,
    practitioner_id: QueryId = None,
    starts_from: Annotated[UtcDatetime | None, Query(alias="from")] = None,
    starts_before: Annotated[UtcDatetime | None, Query(alias="to")] = None,
) -> dict[str, Any]:
    """Bookings of the caller's practices (or of one of them), by start time, paginated."""
    rows = await repository.list_bookings(
        service.pool,
        practice_ids=caller.practices(practice_id),
        status=status,
        practitioner_id=practitioner_id,
        starts_from=starts_from,
        starts_before=starts_before,
        limit=page.limit,
        offset=page.offset,
    )
    return {"items": [dict(r) for r in rows], "page": page.page, "page_size": page.page_size}


@router.get("/bookings/{booking_id}", response_model=BookingWithTrail)
async def one_booking(booking_id: PathId, caller: Caller, service: Service) -> dict[str, Any]:
    """One booking with its full audit trail."""
    booking = await repository.get_booking(service.pool, booking_id)
    if booking is None or not caller.can_read(booking["practice_id"]):
        raise not_found("booking")
    trail = await repository.audit_trail(service.pool, booking_id)
    return {
        **dict(booking),
        "audit_trail": [
            {**dict(r), "actor": json.loads(r["actor"]) if r["actor"] else None, "detail": json.loads(r["detail"])}
            for r in trail
        ],
    }


@router.get("/reports/cancellations", response_model=Report)
async def cancellation_report(
    caller: Caller,
    service: Service,
    starts_from: Annotated[UtcDatetime, Query(alias="from", description="period start (appointment start time)")],
    starts_before: Annotated[UtcDatetime, Query(alias="to", description="period end, exclusive")],
    group_by: GroupBy = "practice",
    practice_id: QueryId = None,
) -> dict[str, Any]:
    """Cancellation and no-show rates over a period (at most MAX_REPORT_DAYS), per practice,
    practitioner or service."""
    if not timedelta(0) < starts_before - starts_from <= timedelta(days=MAX_REPORT_DAYS):
        raise HTTPException(422, f"`to` must be after `from`, and the period at most {MAX_REPORT_DAYS} days")
    rows = await repository.report(
        service.pool,
        group_by=group_by,
        practice_ids=caller.practices(practice_id),
        starts_from=starts_from,
        starts_before=starts_before,
    )
    groups = [
        {
            **dict(r),
            "cancellation_rate": domain.rate(r["cancelled"], r["bookings"]),
            "no_show_rate": domain.rate(r["no_shows"], r["bookings"]),
            "late_share_of_cancellations": domain.rate(r["late"], r["cancelled"]),
            "timely_share_of_cancellations": domain.rate(r["timely"], r["cancelled"]),
        }
        for r in rows
    ]
    return {"group_by": group_by, "starts_from": starts_from, "starts_before": starts_before, "groups": groups}

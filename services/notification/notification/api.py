"""notification's read API: the delivery log, by booking and by professional.

Every route needs a bearer token (shared.auth). A booking's log is shown to its practice (`ops`:
every practice); another practice's booking answers 404 like one that does not exist. A
professional works across offices, so their notices are shown to `ops` only (403 otherwise).
Nothing here carries personal data: no address, no subject, no text; a skip or error reason is
shown as recorded, masked by shared.redaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends

from shared.auth import Principal, authenticated, with_role
from shared.http import Page, PageOf, PathId, View, not_found
from shared.service import Runtime, runtime_of

from . import repository

router = APIRouter(tags=["notifications"])


class Delivery(View):
    notification_id: UUID
    event_id: str
    event_type: str
    booking_id: str | None
    professional_id: str | None
    practice_id: str | None
    recipient: str
    channel: str
    template: str
    locale: str
    status: str
    reason: str | None
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    finished_at: datetime | None


class BookingNotifications(PageOf[Delivery]):
    booking_id: str


class ProfessionalNotifications(PageOf[Delivery]):
    professional_id: str


Caller = Annotated[Principal, Depends(authenticated)]
Ops = Annotated[Principal, Depends(with_role(frozenset({"ops"})))]
Service = Annotated[Runtime, Depends(runtime_of)]


@router.get("/bookings/{booking_id}/notifications", response_model=BookingNotifications)
async def booking_notifications(
    booking_id: PathId, caller: Caller, service: Service, page: Annotated[Page, Depends()]
) -> dict[str, Any]:
    """Every delivery about one booking (cancellation, rejection, no-show fee, slot offer,
    manual update; holds told to the professional for ops only) with its status, reason and
    attempts, oldest first, paginated."""
    booking = await repository.booking_practice(service.pool, booking_id)
    if not booking["known"] or not caller.can_read(booking["practice_id"]):
        raise not_found("booking")
    rows = await repository.deliveries_for_booking(
        service.pool, booking_id, with_professional=caller.is_ops, limit=page.limit, offset=page.offset
    )
    return {"booking_id": booking_id, "items": [dict(r) for r in rows], "page": page.page, "page_size": page.page_size}


@router.get("/professionals/{professional_id}/notifications", response_model=ProfessionalNotifications)
async def professional_notifications(
    professional_id: PathId, caller: Ops, service: Service, page: Annotated[Page, Depends()]
) -> dict[str, Any]:
    """The notices sent to one professional (holds, suspension), oldest first, paginated."""
    if not await repository.professional_known(service.pool, professional_id):
        raise not_found("professional")
    rows = await repository.deliveries_for_professional(
        service.pool, professional_id, limit=page.limit, offset=page.offset
    )
    return {
        "professional_id": professional_id,
        "items": [dict(r) for r in rows],
        "page": page.page,
        "page_size": page.page_size,
    }

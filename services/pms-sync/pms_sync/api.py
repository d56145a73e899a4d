"""pms-sync's read API: a booking's syncs, and a practice's manual updates.

Every route needs a bearer token (shared.auth) and shows only the token's practices (`ops`:
every practice); another practice's booking or practice answers 404 like one that does not
exist. A sync is shown without its command: it may hold a chart note.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from shared.auth import Principal, authenticated
from shared.http import Page, PageOf, PathId, View, not_found
from shared.service import Runtime, runtime_of

from . import repository

router = APIRouter(tags=["pms-sync"])


class Sync(View):
    sync_id: str
    booking_id: str
    practice_id: str
    request_id: str
    integration: str
    action: str
    topic: str
    status: str
    attempts: int
    next_retry_at: datetime | None
    error: str | None
    external_ref: str | None
    created_at: datetime
    finished_at: datetime | None


class BookingSyncs(View):
    booking_id: str
    items: list[Sync]


class ManualUpdate(View):
    id: int
    booking_id: str
    practice_id: str
    integration: str
    action: str
    message: str
    sync_id: str | None
    created_at: datetime


class PracticeManualUpdates(PageOf[ManualUpdate]):
    practice_id: str


Caller = Annotated[Principal, Depends(authenticated)]
Service = Annotated[Runtime, Depends(runtime_of)]


@router.get("/bookings/{booking_id}/syncs", response_model=BookingSyncs)
async def booking_syncs(booking_id: PathId, caller: Caller, service: Service) -> dict[str, Any]:
    """Every sync of one booking with its status, attempts, error and the PMS's `external_ref`,
    oldest first. A booking never synced (its practice has no PMS integration, or uses `manual`)
    is unknown here: 404."""
    rows = await repository.syncs_for_booking(service.pool, booking_id, practice_ids=caller.practices())
    if not rows:
        raise not_found("booking")
    return {"booking_id": booking_id, "items": [dict(r) for r in rows]}


@router.get("/practices/{practice_id}/manual-updates", response_model=PracticeManualUpdates)
async def practice_manual_updates(
    practice_id: PathId, caller: Caller, service: Service, page: Annotated[Page, Depends()]
) -> dict[str, Any]:
    """What one practice must change in its PMS by hand, newest first, paginated. Every entry is
    open: the contract has no way to close one yet."""
    rows = await repository.manual_updates(
        service.pool, practice_ids=caller.practices(practice_id), limit=page.limit, offset=page.offset
    )
    return {
        "practice_id": practice_id,
        "items": [dict(r) for r in rows],
        "page": page.page,
        "page_size": page.page_size,
    }

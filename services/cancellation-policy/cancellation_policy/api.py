"""cancellation-policy's read API: a practice's settings versions, and the decisions made for a
booking.

Every route needs a bearer token (shared.auth) and shows only the token's practices (`ops`:
every practice); another practice's settings or decisions answer 404 like ones that do not exist.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from shared.auth import Principal, authenticated
from shared.http import Page, PageOf, PathId, View, not_found
from shared.service import Runtime, runtime_of

from . import handlers, repository

router = APIRouter(tags=["policy"])


class SettingsVersion(View):
    version: int
    policy_version: str
    settings: dict[str, Any]
    name: str
    timezone: str
    locale: str
    configured_at: datetime


class PracticePolicy(View):
    practice_id: str
    policy_version: str  # the one in force: every decision from now on names it
    versions: list[SettingsVersion]  # oldest first, paginated
    page: int
    page_size: int


class Decision(View):
    request_id: str
    practice_id: str
    policy_version: str
    allowed: bool
    classification: str
    explanation: str
    decision: dict[str, Any]
    decided_at: datetime


class BookingDecisions(PageOf[Decision]):
    booking_id: str


Caller = Annotated[Principal, Depends(authenticated)]
Service = Annotated[Runtime, Depends(runtime_of)]


@router.get("/practices/{practice_id}/policy", response_model=PracticePolicy)
async def practice_policy(
    practice_id: PathId, caller: Caller, service: Service, page: Annotated[Page, Depends()]
) -> dict[str, Any]:
    """The practice's settings in force and every stored version of them, oldest first, paginated
    (a practice that never configured anything is decided by the defaults, `s0`, and answers 404)."""
    if not caller.can_read(practice_id):
        raise not_found("practice")
    latest = await repository.latest_version(service.pool, practice_id)
    if latest is None:
        raise not_found("practice")
    rows = await repository.settings_history(service.pool, practice_id, limit=page.limit, offset=page.offset)
    return {
        "practice_id": practice_id,
        "policy_version": handlers.policy_version(latest),
        "versions": [
            {**dict(r), "settings": json.loads(r["settings"]), "policy_version": handlers.policy_version(r["version"])}
            for r in rows
        ],
        "page": page.page,
        "page_size": page.page_size,
    }


@router.get("/bookings/{booking_id}/decisions", response_model=BookingDecisions)
async def booking_decisions(
    booking_id: PathId, caller: Caller, service: Service, page: Annotated[Page, Depends()]
) -> dict[str, Any]:
    """Every decision made for one booking, with its explanation, oldest first, paginated."""
    practice_ids = caller.practices()
    rows = await repository.decisions_for_booking(
        service.pool, booking_id, practice_ids=practice_ids, limit=page.limit, offset=page.offset
    )
    if not rows and not await repository.has_decisions(service.pool, booking_id, practice_ids=practice_ids):
        raise not_found("booking")
    return {
        "booking_id": booking_id,
        "items": [{**dict(r), "decision": json.loads(r["decision"])} for r in rows],
        "page": page.page,
        "page_size": page.page_size,
    }

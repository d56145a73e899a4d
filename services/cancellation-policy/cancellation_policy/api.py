"""cancellation-policy's read API: a practice's settings versions, the decisions made for a
booking, and reports of the decisions (fees by tier, turn-away pay).

Every route needs a bearer token (shared.auth) and shows only the token's practices (`ops`:
every practice); another practice's settings or decisions answer 404 like ones that do not exist.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from shared.auth import Principal, authenticated
from shared.contracts.common import UtcDatetime
from shared.http import Page, PageOf, PathId, QueryId, View, not_found
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


class TierFees(View):
    practice_id: str
    classification: str
    notice_under_hours: int | None  # the tier's notice; None: the flat fee (or a no-show's)
    currency: str
    fees: int
    total: Decimal


class TurnawayPay(View):
    practice_id: str
    currency: str | None  # None: cancellations of booked professionals that owed nothing
    owed: int
    total: Decimal | None
    timely_cancellations: int
    late_cancellations: int


class FeeReport(View):
    decided_from: datetime
    decided_before: datetime
    rows: list[TierFees]


class TurnawayReport(View):
    decided_from: datetime
    decided_before: datetime
    rows: list[TurnawayPay]


MAX_REPORT_DAYS = 400
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


From = Annotated[UtcDatetime, Query(alias="from", description="period start (decision time)")]
To = Annotated[UtcDatetime, Query(alias="to", description="period end, exclusive")]


def _period(decided_from: datetime, decided_before: datetime) -> None:
    if not timedelta(0) < decided_before - decided_from <= timedelta(days=MAX_REPORT_DAYS):
        raise HTTPException(422, f"`to` must be after `from`, and the period at most {MAX_REPORT_DAYS} days")


@router.get("/reports/fees-by-tier", response_model=FeeReport)
async def fees_by_tier(
    caller: Caller, service: Service, decided_from: From, decided_before: To, practice_id: QueryId = None
) -> dict[str, Any]:
    """Fees decided in the period per practice, classification, tier and currency, for the
    token's practices (`ops`: every practice)."""
    _period(decided_from, decided_before)
    rows = await repository.fees_by_tier(
        service.pool,
        practice_ids=caller.practices(practice_id),
        decided_from=decided_from,
        decided_before=decided_before,
    )
    return {"decided_from": decided_from, "decided_before": decided_before, "rows": [dict(r) for r in rows]}


@router.get("/reports/turnaway-pay", response_model=TurnawayReport)
async def turnaway_pay(
    caller: Caller, service: Service, decided_from: From, decided_before: To, practice_id: QueryId = None
) -> dict[str, Any]:
    """Offices' cancellations of booked professionals decided in the period, and the turn-away
    pay they owe, per practice and currency."""
    _period(decided_from, decided_before)
    rows = await repository.turnaway_pay(
        service.pool,
        practice_ids=caller.practices(practice_id),
        decided_from=decided_from,
        decided_before=decided_before,
    )
    return {"decided_from": decided_from, "decided_before": decided_before, "rows": [dict(r) for r in rows]}

"""scoring's read API: a professional's score, ledger, holds and suspension, and their excuses.

Every route needs a bearer token (shared.auth) with the `ops` role (403 otherwise). A
professional works for many practices, and scoring keeps no practice with a score, a hold or an
excuse (a penalty follows the professional wherever it was earned), so a practice's token has no
part of this data it could be scoped to. Ids scoring has never heard of answer 404.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends

from shared.auth import Principal, with_role
from shared.http import Page, PageOf, PathId, View, not_found
from shared.service import Runtime, runtime_of

from . import domain, repository

OPS = frozenset({"ops"})

router = APIRouter(tags=["scoring"])


class LedgerEntry(View):
    entry_id: str
    booking_id: str | None
    delta: int
    cause: str
    occurred_at: datetime
    event_id: str
    recorded_at: datetime


class Hold(View):
    hold_id: str
    booking_id: str
    cause: str
    occurred_at: datetime
    starts_at: datetime
    ends_at: datetime
    status: str
    lift_cause: str | None
    lifted_at: datetime | None
    excused_at: datetime | None
    excuse_id: str | None
    placed_at: datetime


class Professional(View):
    professional_id: str
    score: int
    suspended_at: datetime | None
    suspension_holds: list[str]
    ledger: list[LedgerEntry]  # oldest first by the causing event's time, paginated
    ledger_entries: int
    holds: list[Hold]
    page: int
    page_size: int


class Excuse(View):
    excuse_id: str
    professional_id: str | None
    booking_id: str | None
    document_ref: str | None
    submitted_at: datetime | None
    status: str
    reason: str | None
    message: str | None
    decision: str | None
    reviewer_id: str | None
    reviewed_at: datetime | None
    recorded_at: datetime
    updated_at: datetime


class ProfessionalExcuses(PageOf[Excuse]):
    professional_id: str


Operator = Annotated[Principal, Depends(with_role(OPS))]
Service = Annotated[Runtime, Depends(runtime_of)]


@router.get("/professionals/{professional_id}", response_model=Professional)
async def professional(
    professional_id: PathId, _: Operator, service: Service, page: Annotated[Page, Depends()]
) -> dict[str, Any]:
    """One professional's score, suspension, holds and ledger (paginated)."""
    if not await repository.professional_known(service.pool, professional_id):
        raise not_found("professional")
    row = await repository.get_professional(service.pool, professional_id)
    deltas = await repository.ledger_deltas(service.pool, professional_id)
    ledger = await repository.ledger(service.pool, professional_id, limit=page.limit, offset=page.offset)
    holds = await repository.holds_for_read(service.pool, professional_id)
    return {
        "professional_id": professional_id,
        "score": domain.score(deltas),
        "suspended_at": row["suspended_at"] if row else None,
        "suspension_holds": list(row["suspension_holds"] or []) if row else [],
        "ledger": [dict(r) for r in ledger],
        "ledger_entries": len(deltas),
        "holds": [dict(r) for r in holds],
        "page": page.page,
        "page_size": page.page_size,
    }


@router.get("/professionals/{professional_id}/excuses", response_model=ProfessionalExcuses)
async def professional_excuses(
    professional_id: PathId, _: Operator, service: Service, page: Annotated[Page, Depends()]
) -> dict[str, Any]:
    """A professional's excuses with what became of them, oldest first, paginated."""
    if not await repository.professional_known(service.pool, professional_id):
        raise not_found("professional")
    rows = await repository.excuses_for_read(service.pool, professional_id, limit=page.limit, offset=page.offset)
    return {
        "professional_id": professional_id,
        "items": [dict(r) for r in rows],
        "page": page.page,
        "page_size": page.page_size,
    }


@router.get("/excuses", response_model=PageOf[Excuse])
async def excuses(
    _: Operator,
    service: Service,
    page: Annotated[Page, Depends()],
    status: Literal["pending", "approved", "rejected"] = "pending",
) -> dict[str, Any]:
    """Excuses of every professional in one status (default `pending`: the review queue), oldest
    first, paginated."""
    rows = await repository.excuses_by_status(service.pool, status, limit=page.limit, offset=page.offset)
    return {"items": [dict(r) for r in rows], "page": page.page, "page_size": page.page_size}


@router.get("/excuses/{excuse_id}", response_model=Excuse)
async def one_excuse(excuse_id: PathId, _: Operator, service: Service) -> dict[str, Any]:
    """One excuse: `status` pending, approved or rejected; a `reason` and `message` when rejected."""
    row = await repository.excuse_for_read(service.pool, excuse_id)
    if row is None:
        raise not_found("excuse")
    return dict(row)

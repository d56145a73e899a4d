"""scoring's read API: a professional's score, ledger, holds and suspension, and their excuses;
the suspended professionals; patients' standing per practice and offices' scores.

Every professional route needs a bearer token (shared.auth) with the `ops` role (403 otherwise). A
professional works for many practices, and scoring keeps no practice with a score, a hold or an
excuse (a penalty follows the professional wherever it was earned), so a practice's token has no
part of this data it could be scoped to. Ids scoring has never heard of answer 404.
Standings and office scores belong to a practice: its token (any role) reads them, `ops` every
practice's; another practice answers 404.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends

from shared.auth import Principal, authenticated, with_role
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
    cleared_at: datetime | None = None  # reinstated: no longer counts towards a suspension
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


class SuspendedProfessional(View):
    professional_id: str
    suspended_at: datetime
    suspension_holds: list[str]
    score: int


class StandingCount(View):
    practice_id: str
    standing: str
    patients: int


class PatientStandingView(View):
    patient_id: str
    standing: str
    count: int
    changed_at: datetime | None
    next_review_at: datetime | None


class PracticeStandings(PageOf[PatientStandingView]):
    """A practice's patients by standing (`counts`), and those not in good standing (`items`)."""

    practice_id: str
    counts: dict[str, int]


class OfficeScore(View):
    practice_id: str
    score: int
    timely_cancellations: int  # of booked professionals
    late_cancellations: int


Operator = Annotated[Principal, Depends(with_role(OPS))]
Caller = Annotated[Principal, Depends(authenticated)]
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


# --- second release (issue 17) ------------------------------------------------------------------


@router.get("/suspended-professionals", response_model=PageOf[SuspendedProfessional])
async def suspended_professionals(_: Operator, service: Service, page: Annotated[Page, Depends()]) -> dict[str, Any]:
    """Professionals suspended now (the reinstatement queue), longest suspended first, paginated."""
    rows = await repository.suspended_professionals(service.pool, limit=page.limit, offset=page.offset)
    items = [
        {
            "professional_id": r["professional_id"],
            "suspended_at": r["suspended_at"],
            "suspension_holds": list(r["suspension_holds"] or []),
            "score": domain.score(await repository.ledger_deltas(service.pool, r["professional_id"])),
        }
        for r in rows
    ]
    return {"items": items, "page": page.page, "page_size": page.page_size}


@router.get("/practices/{practice_id}/standings", response_model=PracticeStandings)
async def practice_standings(
    practice_id: PathId, caller: Caller, service: Service, page: Annotated[Page, Depends()]
) -> dict[str, Any]:
    """How many of the practice's patients are in each standing, and those not in good standing
    (most recently moved first, paginated). The practice's token (any role) or `ops`."""
    if not caller.can_read(practice_id):
        raise not_found("practice")
    counts = await repository.standing_counts(service.pool, [practice_id])
    rows = await repository.standings_not_good(service.pool, practice_id, limit=page.limit, offset=page.offset)
    return {
        "practice_id": practice_id,
        "counts": {standing: 0 for standing in domain.STANDINGS} | {r["standing"]: r["patients"] for r in counts},
        "items": [dict(r) for r in rows],
        "page": page.page,
        "page_size": page.page_size,
    }


@router.get("/practices/{practice_id}/standings/{patient_id}", response_model=PatientStandingView)
async def patient_standing(practice_id: PathId, patient_id: PathId, caller: Caller, service: Service) -> dict[str, Any]:
    """One patient's standing at the practice (good when nothing was ever counted)."""
    if not caller.can_read(practice_id):
        raise not_found("practice")
    row = await repository.patient_standing_for_read(service.pool, practice_id, patient_id)
    if row is None:
        return {"patient_id": patient_id, "standing": "good", "count": 0, "changed_at": None, "next_review_at": None}
    return dict(row)


@router.get("/reports/standings", response_model=list[StandingCount])
async def standings_report(caller: Caller, service: Service) -> list[dict[str, Any]]:
    """Patients per practice and standing, for the token's practices (`ops`: every practice)."""
    return [dict(r) for r in await repository.standing_counts(service.pool, caller.practices())]


@router.get("/reports/office-scores", response_model=PageOf[OfficeScore])
async def office_scores(caller: Caller, service: Service, page: Annotated[Page, Depends()]) -> dict[str, Any]:
    """Each office's score and its cancellations of booked professionals, for the token's
    practices (`ops`: every office), by practice id, paginated."""
    rows = await repository.office_scores(service.pool, caller.practices(), limit=page.limit, offset=page.offset)
    items = [
        {
            "practice_id": r["practice_id"],
            "score": domain.office_score([r["deltas"]]),
            "timely_cancellations": r["timely_cancellations"],
            "late_cancellations": r["late_cancellations"],
        }
        for r in rows
    ]
    return {"items": items, "page": page.page, "page_size": page.page_size}

"""The scoring service: each professional's reliability score ledger, holds, excuses,
recalculation and suspension.

Consumes `booking.events.v1` (booking.cancelled, booking.no_show_recorded, booking.completed)
and `upstream.professionals.v1` (excuse.submitted, excuse.reviewed,
score.recalculation_requested); publishes `scoring.events.v1` (score.changed, hold.placed,
hold.lifted, account.suspended), keyed by professional_id. Background: hold expiry and the
nightly recalculation (scheduler.py).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from shared.contracts.scoring import AccountSuspended, HoldLifted, HoldPlaced, ScoreChanged
from shared.http import BadRequest, page_args, required
from shared.service import Runtime, ServiceDefinition
from shared.topics import BOOKING_EVENTS, SCORING_EVENTS, UPSTREAM_PROFESSIONALS

from . import domain, handlers, repository, scheduler
from .settings import ScoringSettings


def _routes(service: Runtime) -> list[tuple[str, Any]]:
    async def professional(query: dict[str, str]) -> dict[str, Any]:
        """One professional's score, ledger (paginated), holds and excuses: `?professional_id=`.

        A professional scoring has never heard of has the starting score and nothing else.
        """
        professional_id = required(query, "professional_id")
        limit, offset = page_args(query)
        row = await repository.get_professional(service.pool, professional_id)
        deltas = await repository.ledger_deltas(service.pool, professional_id)
        ledger = await repository.ledger(service.pool, professional_id, limit=limit, offset=offset)
        holds = await repository.holds_for_read(service.pool, professional_id)
        excuses = await repository.excuses_for_read(service.pool, professional_id)
        return {
            "professional_id": professional_id,
            "score": domain.score(deltas),
            "suspended_at": row["suspended_at"] if row else None,
            "suspension_holds": list(row["suspension_holds"] or []) if row else [],
            "ledger": [dict(r) for r in ledger],
            "ledger_entries": len(deltas),
            "holds": [dict(r) for r in holds],
            "excuses": [dict(r) for r in excuses],
            "page_size": limit,
            "offset": offset,
        }

    async def excuses(query: dict[str, str]) -> dict[str, Any]:
        """Excuses with what became of them (`status` pending|approved|rejected; a `reason` and
        `message` when rejected): `?professional_id=` for all of one professional's, or
        `?excuse_id=` for one."""
        if excuse_id := query.get("excuse_id"):
            row = await repository.excuse_for_read(service.pool, excuse_id)
            return {"excuse_id": excuse_id, "excuses": [dict(row)] if row else []}
        professional_id = query.get("professional_id")
        if not professional_id:
            raise BadRequest("professional_id or excuse_id is required")
        rows = await repository.excuses_for_read(service.pool, professional_id)
        return {"professional_id": professional_id, "excuses": [dict(r) for r in rows]}

    return [("/professional", professional), ("/excuses", excuses)]


def definition(settings: ScoringSettings | None = None) -> ServiceDefinition:
    settings = settings or ScoringSettings()
    deps = handlers.ScoringDeps(
        repository=repository,
        suspension_holds=settings.suspension_holds,
        suspension_window=timedelta(days=settings.suspension_window_days),
    )

    async def make_deps() -> handlers.ScoringDeps:
        return deps

    return ServiceDefinition(
        name=settings.service_name,
        description=(
            "Professional reliability: the score ledger, holds that stack and expire, excuses,"
            " the nightly recalculation, and suspension after repeated unexcused holds."
        ),
        settings=settings,
        migrations=Path(__file__).parent.parent / "migrations",
        consumes={
            BOOKING_EVENTS: {
                "booking.cancelled": handlers.score_cancellation,
                "booking.no_show_recorded": handlers.score_no_show,
                "booking.completed": handlers.score_completion,
            },
            UPSTREAM_PROFESSIONALS: {
                "excuse.submitted": handlers.record_excuse,
                "excuse.reviewed": handlers.review_excuse,
                "score.recalculation_requested": handlers.recalculate_scores,
            },
        },
        publishes={SCORING_EVENTS: [ScoreChanged, HoldPlaced, HoldLifted, AccountSuspended]},
        make_deps=make_deps,
        background=(scheduler.hold_expiry(settings), scheduler.nightly_recalculation(settings)),
        http_routes=_routes,
    )

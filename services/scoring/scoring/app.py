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

from shared.contracts.scoring import AccountSuspended, HoldLifted, HoldPlaced, ScoreChanged
from shared.service import ServiceDefinition
from shared.topics import BOOKING_EVENTS, SCORING_EVENTS, UPSTREAM_PROFESSIONALS

from . import api, handlers, repository, scheduler
from .settings import ScoringSettings


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
        http_routes=api.router,
    )

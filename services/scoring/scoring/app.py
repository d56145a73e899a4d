"""The scoring service: each professional's reliability score ledger, holds, excuses,
recalculation, suspension and reinstatement; patients' standing per practice and offices'
scores (second release, accountability.py).

Consumes `booking.events.v1` (booking.cancelled, booking.no_show_recorded, booking.completed)
and `upstream.professionals.v1` (excuse.submitted, excuse.reviewed,
score.recalculation_requested, professional.reinstated), `upstream.practices.v1`
(practice.configured: the standing rules) and `billing.events.v1` (charge.waived: the case no
longer counts); publishes `scoring.events.v1` (score.changed, hold.placed, hold.lifted,
account.suspended, account.reinstated keyed by professional_id; patient.standing_changed by
patient_id; office.score_changed by practice_id). Background: hold expiry, the nightly
recalculation (scheduler.py) and the standing review (accountability.py).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from shared.contracts.scoring import (
    AccountReinstated,
    AccountSuspended,
    HoldLifted,
    HoldPlaced,
    OfficeScoreChanged,
    PatientStandingChanged,
    ScoreChanged,
)
from shared.service import ServiceDefinition
from shared.topics import BILLING_EVENTS, BOOKING_EVENTS, SCORING_EVENTS, UPSTREAM_PRACTICES, UPSTREAM_PROFESSIONALS

from . import accountability, api, handlers, repository, scheduler
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
                # the professional's score, then (second release) the office's and the patient's standing
                "booking.cancelled": accountability.on_cancelled,
                "booking.no_show_recorded": accountability.on_no_show,
                "booking.completed": handlers.score_completion,
            },
            UPSTREAM_PROFESSIONALS: {
                "excuse.submitted": handlers.record_excuse,
                "excuse.reviewed": handlers.review_excuse,
                "score.recalculation_requested": handlers.recalculate_scores,
                "professional.reinstated": accountability.reinstate_professional,
            },
            UPSTREAM_PRACTICES: {"practice.configured": accountability.configure_standing},
            BILLING_EVENTS: {"charge.waived": accountability.excuse_waived_case},
        },
        publishes={
            SCORING_EVENTS: [
                ScoreChanged,
                HoldPlaced,
                HoldLifted,
                AccountSuspended,
                PatientStandingChanged,
                OfficeScoreChanged,
                AccountReinstated,
            ]
        },
        make_deps=make_deps,
        background=(
            scheduler.hold_expiry(settings),
            scheduler.nightly_recalculation(settings),
            accountability.standing_review(settings),
        ),
        http_routes=api.router,
    )

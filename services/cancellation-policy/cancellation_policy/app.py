"""The cancellation-policy service: practice settings (versioned) and the rule engine.

Consumes `upstream.practices.v1` (practice.configured), `policy.requests.v1` (from booking) and
`booking.scheduled` on `upstream.bookings.v1` (when each booking's settings were frozen);
publishes `cancellation.assessed` on `policy.decisions.v1` and its answer to every
practice.configured (`practice.configuration_accepted` or `practice.configuration_rejected`) on
`practice.events.v1`.
"""

from __future__ import annotations

from pathlib import Path

from shared.contracts.policy import (
    CancellationAssessed,
    PracticeConfigurationAccepted,
    PracticeConfigurationRejected,
)
from shared.service import ServiceDefinition
from shared.topics import (
    POLICY_DECISIONS,
    POLICY_REQUESTS,
    PRACTICE_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PATIENTS,
    UPSTREAM_PRACTICES,
)

from . import api, configuration, handlers, repository
from .settings import PolicySettings


def definition(settings: PolicySettings | None = None) -> ServiceDefinition:
    settings = settings or PolicySettings()
    return ServiceDefinition(
        name=settings.service_name,
        description="Per-practice cancellation settings, versioned, and the rule engine that decides every request.",
        settings=settings,
        migrations=Path(__file__).parent.parent / "migrations",
        consumes={
            UPSTREAM_PRACTICES: {"practice.configured": handlers.configure_practice},
            POLICY_REQUESTS: {"cancellation.assessment_requested": handlers.assess_request},
            # When each booking was scheduled: its settings are frozen then (second release).
            UPSTREAM_BOOKINGS: {"booking.scheduled": handlers.note_scheduling},
            # Cards on file registered per practice: they win over a booking's flag (second release).
            UPSTREAM_PATIENTS: {
                "patient.card_registered": handlers.register_card,
                "patient.card_removed": handlers.remove_card,
            },
        },
        publishes={
            POLICY_DECISIONS: [CancellationAssessed],
            PRACTICE_EVENTS: [PracticeConfigurationAccepted, PracticeConfigurationRejected],
        },
        make_deps=lambda: handlers.PolicyDeps(repository=repository),
        http_routes=api.router,
        answer_invalid={"practice.configured": configuration.reject_invalid_settings},
    )

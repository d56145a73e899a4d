"""The cancellation-policy service: practice settings (versioned) and the rule engine.

Consumes `upstream.practices.v1` (practice.configured) and `policy.requests.v1` (from booking);
publishes `cancellation.assessed` on `policy.decisions.v1` and its answer to every
practice.configured (`practice.configuration_accepted` or `practice.configuration_rejected`) on
`practice.events.v1`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.contracts.policy import (
    CancellationAssessed,
    PracticeConfigurationAccepted,
    PracticeConfigurationRejected,
)
from shared.http import required
from shared.service import Runtime, ServiceDefinition
from shared.topics import POLICY_DECISIONS, POLICY_REQUESTS, PRACTICE_EVENTS, UPSTREAM_PRACTICES

from . import configuration, handlers, repository
from .settings import PolicySettings


def _routes(service: Runtime) -> list[tuple[str, Any]]:
    async def practice_policy(query: dict[str, str]) -> dict[str, Any]:
        """The versions of one practice's settings: `?practice_id=`."""
        required(query, "practice_id")
        rows = await repository.settings_history(service.pool, query["practice_id"])
        return {
            "practice_id": query["practice_id"],
            "versions": [
                {
                    **dict(r),
                    "settings": json.loads(r["settings"]),
                    "policy_version": handlers.policy_version(r["version"]),
                }
                for r in rows
            ],
        }

    async def booking_decisions(query: dict[str, str]) -> dict[str, Any]:
        """Every decision made for one booking, with its explanation: `?booking_id=`."""
        required(query, "booking_id")
        rows = await repository.decisions_for_booking(service.pool, query["booking_id"])
        return {
            "booking_id": query["booking_id"],
            "decisions": [{**dict(r), "decision": json.loads(r["decision"])} for r in rows],
        }

    return [("/policies", practice_policy), ("/decisions", booking_decisions)]


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
        },
        publishes={
            POLICY_DECISIONS: [CancellationAssessed],
            PRACTICE_EVENTS: [PracticeConfigurationAccepted, PracticeConfigurationRejected],
        },
        make_deps=lambda: handlers.PolicyDeps(repository=repository),
        http_routes=_routes,
        answer_invalid={"practice.configured": configuration.reject_invalid_settings},
    )

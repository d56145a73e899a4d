"""One async function per message type: load, decide, save, emit.

Handlers reach the database only through their ports (`PolicyDeps`, the unit's deps), so
tests/handlers runs them against fakes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.consumer import SetBased, Unit
from shared.contracts.booking import CancellationAssessmentRequested
from shared.contracts.policy import CancellationAssessed, PracticeConfigurationAccepted
from shared.contracts.upstream import (
    BookingScheduled,
    PatientCardRegistered,
    PatientCardRemoved,
    PracticeConfigured,
    PracticeSettings,
)
from shared.topics import POLICY_DECISIONS, PRACTICE_EVENTS

from . import domain


@dataclass(frozen=True)
class PolicyDeps:
    """The handlers' ports, built by `app.definition`'s `make_deps`. No clock: a request is
    decided by its own time, so a replay decides the same."""

    # repository.py, or anything with the same functions (tests/handlers: an in-memory fake).
    repository: Any


def policy_version(practice_version: int) -> str:
    """`r1.s3`: rule-engine version 1 with the practice's third settings version (s0: defaults)."""
    return f"{domain.RULES_VERSION}.s{practice_version}"


async def configure_practice(unit: Unit[PolicyDeps], event: PracticeConfigured) -> None:
    """Store the settings as the practice's next version and say which policy version they are.
    (Settings that break the contract never get here: `configuration.reject_invalid_settings`.)"""
    repository = unit.deps.repository
    version = await repository.add_settings_version(
        unit.conn,
        event.practice_id,
        settings=event.settings.to_json_dict(),
        name=event.name,
        timezone=event.timezone,
        locale=event.locale,
        configured_at=unit.event.envelope.time,
    )
    accepted = PracticeConfigurationAccepted.new(practice_id=event.practice_id, policy_version=policy_version(version))
    unit.emit(PRACTICE_EVENTS, accepted, subject=event.practice_id)


async def note_scheduling(unit: Unit[PolicyDeps], event: BookingScheduled) -> None:
    """Remember when the booking was scheduled (its own time): its deal is frozen then."""
    await unit.deps.repository.record_scheduling(
        unit.conn, booking_id=event.booking_id, practice_id=event.practice_id, scheduled_at=unit.event.envelope.time
    )


async def register_card(unit: Unit[PolicyDeps], event: PatientCardRegistered) -> None:
    """The patient has a card on file at the practice from now on (RULES: it wins over the
    booking's card_on_file flag)."""
    await unit.deps.repository.record_card(
        unit.conn,
        practice_id=event.practice_id,
        patient_id=event.patient_id,
        has_card=True,
        changed_at=event.registered_at,
    )


async def remove_card(unit: Unit[PolicyDeps], event: PatientCardRemoved) -> None:
    """The patient has no card on file at the practice any more, whatever a booking's flag says."""
    await unit.deps.repository.record_card(
        unit.conn,
        practice_id=event.practice_id,
        patient_id=event.patient_id,
        has_card=False,
        changed_at=event.removed_at,
    )


# How many stored settings versions stay validated in memory: far more than the practices one
# replica decides for in a burst, and small (a few MB at most) whatever the traffic.
SETTINGS_CACHE_SIZE = 1024


@functools.lru_cache(maxsize=SETTINGS_CACHE_SIZE)
def stored_settings(text: str) -> PracticeSettings:
    """A stored settings version as the rules read it, validated once per version rather than
    once per request. Keyed by the stored text itself: a (practice, version) is never changed
    once stored, so it always reads back as the same text, and the same text always gives the
    same settings (a frozen model, shared safely), whatever the database held before."""
    return PracticeSettings.model_validate(json.loads(text))


def _version(stored: tuple[int, str] | None) -> domain.SettingsVersion | None:
    return domain.SettingsVersion(stored[0], stored_settings(stored[1])) if stored else None


async def assess_requests(units: Sequence[Unit[PolicyDeps]], events: Sequence[CancellationAssessmentRequested]) -> None:
    """Assessment requests, set-based: the settings that decide each request (the practice's
    newest, and those frozen when its booking was scheduled) loaded in one statement, the cards
    registered at the practices in one, the decisions recorded in one."""
    conn, repository = units[0].conn, units[0].deps.repository
    stored = await repository.settings_for_requests(conn, [(e.practice_id, e.booking_id) for e in events])
    patients = [(e.practice_id, e.booking.patient_id) for e in events if e.booking.patient_id]
    cards = await repository.cards_on_file(conn, patients) if patients else {}
    decisions = [_decide(event, stored[(event.practice_id, event.booking_id)], cards) for event in events]
    recorded = await repository.record_decisions(
        conn,
        [(e.request_id, e.booking_id, e.practice_id, d.to_json_dict()) for e, d in zip(events, decisions, strict=True)],
    )
    for unit, event, decision in zip(units, events, decisions, strict=True):
        if event.request_id not in recorded:
            # The same request again under another envelope id (a replay): it was decided and
            # answered once, and booking takes one answer per request. The first decision stands,
            # even when the settings changed since.
            continue
        recorded.discard(event.request_id)  # the same request twice in one set: the first answers
        unit.emit(POLICY_DECISIONS, decision, subject=event.booking_id)


assess_request = SetBased(assess_requests)


def _decide(
    event: CancellationAssessmentRequested,
    stored: tuple[tuple[int, str] | None, bool, tuple[int, str] | None],
    cards: dict[tuple[str, str], bool],
) -> CancellationAssessed:
    """One request's decision, by the settings that apply to its booking and the card registered
    for its patient at the practice (which wins over the booking's flag)."""
    current, scheduled_known, then = stored
    used = domain.settings_for_booking(_version(current) or domain.DEFAULTS, _version(then), scheduled_known)
    patient = event.booking.patient_id
    registered = cards.get((event.practice_id, patient)) if patient else None
    if registered is not None and registered != event.booking.patient_card_on_file:
        booking = event.booking.model_copy(update={"patient_card_on_file": registered})
        event = event.model_copy(update={"booking": booking})
    assessment = domain.assess(event, used.settings)
    return CancellationAssessed.new(
        booking_id=event.booking_id,
        request_id=event.request_id,
        allowed=assessment.allowed,
        rejection_reason=assessment.rejection_reason,
        classification=assessment.classification,
        fee=assessment.fee,
        charge_card=assessment.charge_card,
        deposit_action=assessment.deposit_action,
        score_delta=assessment.score_delta,
        hold_days=assessment.hold_days,
        review_hours=assessment.review_hours,
        tier=assessment.tier,
        office_score_delta=assessment.office_score_delta,
        office_cause=assessment.office_cause,
        turnaway_pay=assessment.turnaway_pay,
        fee_waived=assessment.fee_waived,
        policy_version=policy_version(used.version),
        explanation=assessment.explanation,
    )

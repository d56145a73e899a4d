"""What the scoring service publishes on `scoring.events.v1` (keyed by professional_id).

Guarantees: every change of a professional's reliability score is one `score.changed` with
its cause and the resulting score; a hold's placement and lifting are separate events sharing
its `hold_id`; scores and deltas are whole points.
"""

from __future__ import annotations

from typing import ClassVar

from .base import Payload
from .common import HoldCause, HoldLiftCause, Id, ScoreCause, UtcDatetime


class ScoreChanged(Payload):
    event_type: ClassVar[str] = "score.changed"

    professional_id: Id
    booking_id: Id | None = None
    delta: int
    score: int
    cause: ScoreCause


class HoldPlaced(Payload):
    event_type: ClassVar[str] = "hold.placed"

    hold_id: Id
    professional_id: Id
    booking_id: Id
    cause: HoldCause
    starts_at: UtcDatetime
    ends_at: UtcDatetime


class HoldLifted(Payload):
    event_type: ClassVar[str] = "hold.lifted"

    hold_id: Id
    professional_id: Id
    cause: HoldLiftCause


class AccountSuspended(Payload):
    event_type: ClassVar[str] = "account.suspended"

    professional_id: Id
    holds: list[str]  # the hold_ids that led to the suspension
    suspended_at: UtcDatetime

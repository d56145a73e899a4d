"""What the scoring service publishes on `scoring.events.v1` (keyed by professional_id).

Guarantees: every change of a professional's reliability score is one `score.changed` with
its cause and the resulting score; a hold's placement and lifting are separate events sharing
its `hold_id`; a suspension ends with `account.reinstated`; a patient's standing
at a practice and an office's score are events of their own (second release); scores and deltas are whole points, within `SCORE_LIMIT` either way.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from .base import Payload
from .common import HoldCause, HoldLiftCause, Id, IdList, Message, OfficeScoreCause, ScoreCause, Standing, UtcDatetime

SCORE_LIMIT = 1_000_000  # scores are unclamped sums of penalties; this is far beyond any real one


class ScoreChanged(Payload):
    event_type: ClassVar[str] = "score.changed"

    professional_id: Id
    booking_id: Id | None = None
    delta: int = Field(ge=-SCORE_LIMIT, le=SCORE_LIMIT)
    score: int = Field(ge=-SCORE_LIMIT, le=SCORE_LIMIT)
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
    holds: IdList  # the hold_ids that led to the suspension
    suspended_at: UtcDatetime


# --- second release (issue 17) ---------------------------------------------------------------


class PatientStandingChanged(Payload):
    """A patient's standing at one practice moved (keyed by patient_id): upstream booking
    systems enforce it. `count` is the cases counted in the window after forgiveness."""

    event_type: ClassVar[str] = "patient.standing_changed"

    patient_id: Id
    practice_id: Id
    standing: Standing
    previous: Standing
    count: int = Field(ge=0, le=SCORE_LIMIT)
    window_days: int = Field(ge=1, le=SCORE_LIMIT)
    reason: Message  # a sentence a person can read


class OfficeScoreChanged(Payload):
    """A marketplace office's score moved because its staff cancelled a booked professional
    (keyed by practice_id)."""

    event_type: ClassVar[str] = "office.score_changed"

    practice_id: Id
    booking_id: Id
    delta: int = Field(ge=-SCORE_LIMIT, le=SCORE_LIMIT)
    score: int = Field(ge=-SCORE_LIMIT, le=SCORE_LIMIT)
    cause: OfficeScoreCause


class AccountReinstated(Payload):
    """A professional's suspension ended (keyed by professional_id)."""

    event_type: ClassVar[str] = "account.reinstated"

    professional_id: Id
    reinstated_at: UtcDatetime

"""What the cancellation-policy service publishes: `policy.decisions.v1` and `practice.events.v1`.

Guarantees: a `cancellation.assessed` answers exactly one assessment request (same
`booking_id` and `request_id`), names the policy version that decided it, and carries the
same decision fields that booking embeds as `decision` in `booking.cancelled` and
`booking.no_show_recorded`; `.decision()` gives that embedded form.
Every `practice.configured` that names a readable practice id is answered on
`practice.events.v1` (keyed by practice_id): `practice.configuration_accepted` with the policy
version the settings became, or `practice.configuration_rejected` with a sentence a person can
act on, the previous settings staying in force.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from .base import Payload
from .common import Decision, Id, Label, Message


class CancellationAssessed(Decision, Payload):
    """The policy's decision on one request (the fields of `Decision`, plus the ids)."""

    event_type: ClassVar[str] = "cancellation.assessed"

    booking_id: Id
    request_id: Id

    def decision(self) -> Decision:
        return Decision(**{name: getattr(self, name) for name in Decision.model_fields})


class PracticeConfigurationAccepted(Payload):
    """The practice's settings are in force from now on, as this policy version."""

    event_type: ClassVar[str] = "practice.configuration_accepted"

    practice_id: Id
    policy_version: Label  # e.g. "r1.s3": what every decision made with these settings names


class PracticeConfigurationRejected(Payload):
    """The practice's settings broke the contract's bounds: the previous settings stay in force."""

    event_type: ClassVar[str] = "practice.configuration_rejected"

    practice_id: Id
    reason: Literal["invalid_settings"]
    message: Message  # what to correct, in plain words

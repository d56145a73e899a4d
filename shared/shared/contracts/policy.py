"""What the cancellation-policy service publishes on `policy.decisions.v1`.

Guarantees: a `cancellation.assessed` answers exactly one assessment request (same
`booking_id` and `request_id`), names the policy version that decided it, and carries the
same decision fields that booking embeds as `decision` in `booking.cancelled` and
`booking.no_show_recorded`; `.decision()` gives that embedded form.
"""

from __future__ import annotations

from typing import ClassVar

from .base import Payload
from .common import Decision, Id


class CancellationAssessed(Decision, Payload):
    """The policy's decision on one request (the fields of `Decision`, plus the ids)."""

    event_type: ClassVar[str] = "cancellation.assessed"

    booking_id: Id
    request_id: Id

    def decision(self) -> Decision:
        return Decision(**{name: getattr(self, name) for name in Decision.model_fields})

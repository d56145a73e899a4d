"""What the notification service publishes on `notification.events.v1`.

Guarantees: every notification attempt ends in exactly one `notification.sent` or
`notification.failed` (with the error), naming the recipient role, channel and template.
"""

from __future__ import annotations

from typing import ClassVar

from .base import Payload
from .common import ContactChannel, ErrorText, Id, Label, Recipient


class _NotificationOutcome(Payload):
    notification_id: Id
    booking_id: Id | None = None  # absent for notices about a professional (holds, suspension)
    recipient: Recipient
    channel: ContactChannel
    template: Label


class NotificationSent(_NotificationOutcome):
    event_type: ClassVar[str] = "notification.sent"


class NotificationFailed(_NotificationOutcome):
    event_type: ClassVar[str] = "notification.failed"

    error: ErrorText | None = None

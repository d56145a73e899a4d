"""What the pms-sync service publishes: commands to PMS connectors and sync outcomes.

Guarantees: a `pms.cancel_booking` / `pms.record_no_show` (one topic per integration) carries
everything a PMS could store about the change, so nothing is dropped on the way (fee, reason,
status label, chart note); every command's `sync_id` ends in `pms.sync_completed`,
`pms.sync_failed`, or, where no integration can apply it, `pms.manual_update_required`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from .base import Payload
from .common import (
    Actor,
    Classification,
    ErrorText,
    Fee,
    Id,
    Message,
    NoShowCode,
    Note,
    PmsAction,
    PmsIntegration,
    ReasonCode,
    StatusLabel,
    SyncedIntegration,
    UtcDatetime,
)

SYNC_ATTEMPTS_MAX = 10_000

# --- pms-sync.<integration>.v1 ---------------------------------------------------------------


class PmsCancelBooking(Payload):
    event_type: ClassVar[str] = "pms.cancel_booking"

    sync_id: Id
    booking_id: Id
    practice_id: Id
    cancelled_at: UtcDatetime
    actor: Actor
    classification: Classification
    reason_code: ReasonCode | None = None
    reason_text: Note | None = None
    status_label: StatusLabel
    fee: Fee | None = None
    chart_note: Note | None = None


class PmsRecordNoShow(Payload):
    event_type: ClassVar[str] = "pms.record_no_show"

    sync_id: Id
    booking_id: Id
    practice_id: Id
    code: NoShowCode
    recorded_at: UtcDatetime
    actor: Actor
    fee: Fee | None = None
    chart_note: Note | None = None


class PmsUpdateFee(Payload):
    """Second release: the fee of a booking changed after the fact (`fee: null`: waived)."""

    event_type: ClassVar[str] = "pms.update_fee"

    sync_id: Id
    booking_id: Id
    practice_id: Id
    charge_id: Id
    fee: Fee | None

    def to_json_dict(self) -> dict[str, Any]:
        """The wire form, with `fee: null` when waived: the field is required, so it is the one
        left in when unset (a waiver left out would not parse)."""
        return super().to_json_dict() | {"fee": None if self.fee is None else self.fee.model_dump(mode="json")}


# --- pms-sync.events.v1 ----------------------------------------------------------------------


class _SyncOutcome(Payload):
    sync_id: Id
    booking_id: Id
    integration: SyncedIntegration
    attempts: int = Field(ge=1, le=SYNC_ATTEMPTS_MAX)


class PmsSyncCompleted(_SyncOutcome):
    event_type: ClassVar[str] = "pms.sync_completed"


class PmsSyncFailed(_SyncOutcome):
    event_type: ClassVar[str] = "pms.sync_failed"

    error: ErrorText | None = None


class PmsManualUpdateRequired(Payload):
    event_type: ClassVar[str] = "pms.manual_update_required"

    booking_id: Id
    practice_id: Id
    integration: PmsIntegration
    action: PmsAction
    message: Message  # what staff must change in their PMS, in plain words

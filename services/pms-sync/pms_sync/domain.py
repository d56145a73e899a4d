"""What goes to a practice's PMS, what the practice must do by hand, and when to send again.

Pure: plain values and contract models in, contract models and decisions out; no I/O.
Guarantees (RULES.md "PMS synchronisation"):
- `praktika` / `core_practice`: a command on that integration's topic carrying everything the
  PMS could store (actor, classification, reasons, status label, fee, chart note); `manual`: a
  manual-update request at once; `none`: nothing.
- One change of one booking has one `sync_id` (uuid5 of booking id and request id), the same on
  every resend, so a connector can apply it once.
- A sync ends once: the first ok ack completes it, the first error ack or running out of
  attempts fails it (and asks for a manual update); anything after that changes nothing.
"""

from __future__ import annotations

import uuid
from typing import Literal

from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.common import Actor
from shared.contracts.pms_sync import PmsCancelBooking, PmsManualUpdateRequired, PmsRecordNoShow
from shared.topics import PMS_INTEGRATION_TOPICS

Integration = Literal["praktika", "core_practice", "manual", "none"]
Action = Literal["cancel_booking", "record_no_show"]
SyncStatus = Literal["sent", "completed", "failed"]

DEFAULT_INTEGRATION: Integration = "none"  # CONTRACT.md: a practice that never configured one

INTEGRATION_NAMES = {"praktika": "Praktika", "core_practice": "Core Practice"}

MANUAL_MESSAGES = {
    "cancel_booking": "Manual update required: cancel this booking in your PMS too",
    "record_no_show": "Manual update required: record this no-show in your PMS too",
}
_WHAT_TO_DO = {
    "cancel_booking": "cancel this booking in your PMS too",
    "record_no_show": "record this no-show in your PMS too",
}

COMMAND_MODELS: dict[str, type[PmsCancelBooking] | type[PmsRecordNoShow]] = {
    "cancel_booking": PmsCancelBooking,
    "record_no_show": PmsRecordNoShow,
}

# The reporter of a no-show when its upstream report was never read here: booking.no_show_recorded
# does not name one, and the contract's command needs an actor. Named for what it is.
UNKNOWN_REPORTER = Actor(kind="system", id="service/booking", roles=[])

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cancellations:pms-sync")


def sync_id(booking_id: str, request_id: str) -> str:
    """The one id of one change (a request) of one booking, the same on every resend."""
    return str(uuid.uuid5(_NAMESPACE, f"{booking_id}/{request_id}"))


def route(integration: str) -> Literal["sync", "manual", "none"]:
    if integration in PMS_INTEGRATION_TOPICS:
        return "sync"
    if integration == "manual":
        return "manual"
    return "none"


def topic_of(integration: str) -> str:
    """The integration's outbound topic (`pms-sync.praktika.v1`, `pms-sync.core-practice.v1`)."""
    return PMS_INTEGRATION_TOPICS[integration]


def cancel_command(event: BookingCancelled, booking_id: str, chart_note: str | None) -> PmsCancelBooking:
    """`pms.cancel_booking` for `booking_id` (the cancelled booking or one of its series)."""
    return PmsCancelBooking.new(
        sync_id=sync_id(booking_id, event.request_id),
        booking_id=booking_id,
        practice_id=event.practice_id,
        cancelled_at=event.cancelled_at,
        actor=event.actor,
        classification=event.classification,
        reason_code=event.reason_code,
        reason_text=event.reason_text,
        status_label=event.status_label,
        fee=event.decision.fee,
        chart_note=chart_note,
    )


def no_show_command(event: BookingNoShowRecorded, reporter: Actor | None, chart_note: str | None) -> PmsRecordNoShow:
    return PmsRecordNoShow.new(
        sync_id=sync_id(event.booking_id, event.request_id),
        booking_id=event.booking_id,
        practice_id=event.practice_id,
        code=event.code,
        recorded_at=event.recorded_at,
        actor=reporter or UNKNOWN_REPORTER,
        fee=event.decision.fee,
        chart_note=chart_note,
    )


def manual_message(action: str, integration: str, error: str | None = None, *, failed: bool = False) -> str:
    """What staff must do, in plain words; with why, when a sync failed."""
    if not failed:
        return MANUAL_MESSAGES[action]
    name = INTEGRATION_NAMES.get(integration, integration)
    why = f" ({error[:200]})" if error else ""
    return f"Manual update required: {name} did not take this change{why}; {_WHAT_TO_DO[action]}"


def manual_update(
    booking_id: str, practice_id: str, integration: str, action: str, error: str | None = None, *, failed: bool = False
) -> PmsManualUpdateRequired:
    return PmsManualUpdateRequired.new(
        booking_id=booking_id,
        practice_id=practice_id,
        integration=integration,
        action=action,
        message=manual_message(action, integration, error, failed=failed),
    )


def ack_wait_seconds(attempt: int, *, timeout_seconds: float, max_backoff_seconds: float) -> float:
    """How long the `attempt`-th send waits for its ack: timeout, 2×, 4×, … capped."""
    return min(max_backoff_seconds, timeout_seconds * 2 ** max(0, attempt - 1))


def on_timeout(attempts: int, max_attempts: int) -> Literal["resend", "give_up"]:
    """No ack for the last send: send again, or, after `max_attempts` sends, give up."""
    return "resend" if attempts < max_attempts else "give_up"


def no_ack_error(attempts: int) -> str:
    return f"no acknowledgement after {attempts} attempt{'s' if attempts != 1 else ''}"


def on_ack(status: str, ack_status: str) -> Literal["complete", "fail", "ignore"]:
    """The first ack of a sync that is still waiting decides it; a duplicate or late ack is harmless."""
    if status != "sent":
        return "ignore"
    return "complete" if ack_status == "ok" else "fail"

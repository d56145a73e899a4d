"""What goes to a practice's PMS, what the practice must do by hand, and when to send again.

Pure: plain values and contract models in, contract models and decisions out; no I/O.
Guarantees (docs/rules.md#pms-synchronisation):
- `praktika` / `core_practice`: a command on that integration's topic carrying everything the
  PMS could store (actor, classification, reasons, status label, the fee billing raised, chart
  note); `manual`: a manual-update request at once, naming the PMS when it is known; `none`:
  nothing.
- A command whose upstream request (chart note, a no-show's reporter) has not been read yet
  waits for it, for a bounded time, rather than leave the chart note behind.
- One change of one booking has one `sync_id` (uuid5 of booking id and request id), the same on
  every resend, so a connector can apply it once.
- A sync ends once: the first ok ack completes it, the first error ack or running out of
  attempts fails it (and asks for a manual update); anything after that changes nothing.
- A fee still in staff review is told to no PMS (the command goes without it); the PMS gets
  `pms.update_fee` when a fee becomes final after review, and whenever a final fee changes
  later (adjusted: the new fee; waived: `fee: null`). Each change once, by its own `sync_id`.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from typing import Literal

from shared.backoff import backoff_delay
from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.common import Actor, Decision, Fee
from shared.contracts.pms_sync import PmsCancelBooking, PmsManualUpdateRequired, PmsRecordNoShow, PmsUpdateFee
from shared.topics import PMS_INTEGRATION_TOPICS

Integration = Literal["praktika", "core_practice", "manual", "none"]
Action = Literal["cancel_booking", "record_no_show", "update_fee"]
# waiting: not sent yet, for the upstream request (chart note) to arrive; sent: waiting for an ack;
# superseded: a fee update a newer one of the same booking replaced before it was acknowledged.
SyncStatus = Literal["waiting", "sent", "completed", "failed", "superseded"]
# What pms-sync knows of a charge from billing.events.v1: in review (the PMS has no fee yet),
# final (the PMS has its fee), waived.
ChargeState = Literal["pending_review", "final", "waived"]

DEFAULT_INTEGRATION: Integration = "none"  # CONTRACT.md: a practice that never configured one

# The PMS behind each integration, as staff know it. A `manual` practice has not told us which
# PMS it runs (practice.configured does not carry it), so its messages say "your PMS".
PMS_NAMES = {"praktika": "Praktika", "core_practice": "Core Practice"}
UNKNOWN_PMS = "your PMS"

_WHAT_TO_DO = {
    "cancel_booking": "cancel this booking in {pms} too",
    "record_no_show": "record this no-show in {pms} too",
    "update_fee": "change this booking's fee in {pms} too",
}

COMMAND_MODELS: dict[str, type[PmsCancelBooking] | type[PmsRecordNoShow] | type[PmsUpdateFee]] = {
    "cancel_booking": PmsCancelBooking,
    "record_no_show": PmsRecordNoShow,
    "update_fee": PmsUpdateFee,
}
# The actions pms.manual_update_required can name (the contract's PmsAction): a failed fee update
# is recorded for the read API but not published as one.
PUBLISHED_MANUAL_ACTIONS = frozenset(["cancel_booking", "record_no_show"])

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


def fee_raised(fee: Fee | None) -> Fee | None:
    """The fee billing raises a charge for: the decision's fee, unless there is none or it is
    nothing (billing raises no charge for a zero amount, so the PMS must not show one)."""
    return fee if fee is not None and fee.amount > 0 else None


def fee_told(decision: Decision) -> Fee | None:
    """The fee the PMS is told with the cancellation or no-show: the fee raised, unless it waits
    for staff review (`review_hours`): nobody is told of a fee before it is final, and the PMS
    gets it by `pms.update_fee` when it is."""
    return None if decision.review_hours else fee_raised(decision.fee)


def cancel_command(event: BookingCancelled, booking_id: str, chart_note: str | None) -> PmsCancelBooking:
    """`pms.cancel_booking` for `booking_id` (the cancelled booking or one of its series).

    The decision is about the cancelled booking itself: billing charges its fee once, for that
    booking. The later occurrences of a series cancelled with it are cancelled ahead of time,
    without a fee, so they go to the PMS as `timely` and without one.
    """
    primary = booking_id == event.booking_id
    return PmsCancelBooking.new(
        sync_id=sync_id(booking_id, event.request_id),
        booking_id=booking_id,
        practice_id=event.practice_id,
        cancelled_at=event.cancelled_at,
        actor=event.actor,
        classification=event.classification if primary else "timely",
        reason_code=event.reason_code,
        reason_text=event.reason_text,
        status_label=event.status_label,
        fee=fee_told(event.decision) if primary else None,
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
        fee=fee_told(event.decision),
        chart_note=chart_note,
    )


def waits_for_request(action: str, channel: str | None, request_seen: bool) -> bool:
    """Hold the command back until its upstream request has been read?

    booking.cancelled / booking.no_show_recorded do not carry the chart note (nor a no-show's
    reporter); the request on upstream.bookings.v1 does. It is normally read first, but the two
    topics are consumed independently (a lagging partition, a rebalance), so a command whose
    request is not in yet waits for it — for `PMS_REQUEST_WAIT_SECONDS` at most, then it goes
    without. Cancellations on the `system` channel (a suspended professional's bookings) are
    made by the booking service itself: no upstream request will come, so they never wait.
    """
    if request_seen:
        return False
    return action == "record_no_show" or channel != "system"


def with_request(
    command: PmsCancelBooking | PmsRecordNoShow, actor: Actor, chart_note: str | None
) -> PmsCancelBooking | PmsRecordNoShow:
    """A waiting command completed from its upstream request: the chart note, and for a no-show
    the reporter (a cancellation's actor is in booking.cancelled already)."""
    fields = command.to_json_dict() | {"chart_note": chart_note}
    if isinstance(command, PmsRecordNoShow):
        fields["actor"] = actor.to_json_dict()
    return type(command).model_validate(fields)


def pms_name(integration: str) -> str:
    return PMS_NAMES.get(integration, UNKNOWN_PMS)


def manual_message(action: str, integration: str, error: str | None = None, *, failed: bool = False) -> str:
    """What staff must do, in plain words, naming their PMS when we know it; with why, when a
    sync failed. Always opens with "Manual update required: <what to do> too"."""
    pms = pms_name(integration)
    message = f"Manual update required: {_WHAT_TO_DO[action].format(pms=pms)}"
    if failed:
        message += f" ({pms} did not confirm it: {error[:200]})" if error else f" ({pms} did not confirm it)"
    return message


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


def ack_wait_seconds(
    attempt: int, *, timeout_seconds: float, max_backoff_seconds: float, rng: Callable[[], float] = random.random
) -> float:
    """How long the `attempt`-th send waits for its ack: timeout, 2×, 4×, … capped, with equal
    jitter (between half and all of that; shared.backoff), so the syncs sent together while a
    connector was down are not all resent in the same second. A resend sooner than the
    connector's ack is harmless: it carries the same `sync_id`. `rng` (a float in [0, 1))
    makes it deterministic in tests."""
    return backoff_delay(attempt, base=timeout_seconds, cap=max_backoff_seconds, rng=rng)


def on_timeout(attempts: int, max_attempts: int) -> Literal["resend", "give_up"]:
    """No ack for the last send: send again, or, after `max_attempts` sends, give up."""
    return "resend" if attempts < max_attempts else "give_up"


def no_ack_error(attempts: int) -> str:
    return f"no acknowledgement after {attempts} attempt{'s' if attempts != 1 else ''}"


def on_ack(status: str, ack_status: str) -> Literal["complete", "fail", "ignore"]:
    """The first ack of a sent sync decides it; a duplicate or late ack (or one for a command
    not sent yet) is harmless."""
    if status != "sent":
        return "ignore"
    return "complete" if ack_status == "ok" else "fail"


# --- fees changed after the fact (second release: pms.update_fee) -------------------------------

FeeStep = Literal["tell", "note", "ignore"]


def fee_update_sync_id(booking_id: str, charge_id: str, cause: str) -> str:
    """The one id of one fee change: `cause` is the adjustment's or waiver's request id, or
    `final` for the fee that became final after review."""
    return sync_id(booking_id, f"fee/{charge_id}/{cause}")


def on_charge_created(known: ChargeState | None, status: str | None) -> tuple[ChargeState | None, FeeStep]:
    """`charge.created`: a fee in review is noted (the PMS was told none); the same fee announced
    `due` after review is final now and told (`tell`); a fee due at once was in the command
    already (`note`). A repeat, or a fee waived meanwhile, changes nothing."""
    if status == "pending_review":
        return ("pending_review", "note") if known is None else (None, "ignore")
    if known == "pending_review":
        return "final", "tell"
    if known is None:
        return "final", "note"
    return None, "ignore"


def on_charge_adjusted(known: ChargeState | None) -> FeeStep:
    """`charge.adjusted`: an edit in review is noted (told when final); a change of a final fee
    is told; a charge we never saw raised, or one waived, is not ours to tell."""
    if known == "pending_review":
        return "note"
    if known == "final":
        return "tell"
    return "ignore"


def on_charge_waived(known: ChargeState | None) -> FeeStep:
    """`charge.waived`: a fee the PMS was told (final) goes to `fee: null`; one waived in review
    was never told, so the PMS needs nothing (noted); waived twice changes nothing. A charge we
    never saw raised (billing's events read from before this service did) is told: `null` is
    right whatever the PMS holds."""
    if known == "final" or known is None:
        return "tell"
    if known == "pending_review":
        return "note"
    return "ignore"


def update_fee_command(booking_id: str, practice_id: str, charge_id: str, cause: str, fee: Fee | None) -> PmsUpdateFee:
    return PmsUpdateFee.new(
        sync_id=fee_update_sync_id(booking_id, charge_id, cause),
        booking_id=booking_id,
        practice_id=practice_id,
        charge_id=charge_id,
        fee=fee,
    )

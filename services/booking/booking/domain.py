"""The booking's state machine and the checks booking makes before it asks the policy.

Pure: plain values in, plain values out, no I/O. A booking moves
scheduled -> cancelled | no_show | completed and never back (there is no undo: rebooking is
a new booking). Everything that depends on the practice's settings and on time is the
cancellation policy's to decide; booking only refuses what no policy could allow. A cancelled
slot goes to the longest-waiting matching patient on the practice's waitlist, one offer at a
time, and is released for online booking when nobody (else) waits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.contracts.upstream import REASON_TEXT_MAX_CHARS, REASON_TEXT_TOO_LONG

REJECTION_MESSAGES = {
    "not_found": "We could not find this appointment; please check the booking reference or contact the practice.",
    "already_cancelled": "This appointment is already cancelled; to come in after all, please book a new appointment.",
    "already_completed": "This appointment has already taken place, so it can no longer be cancelled.",
    "already_no_show": "This appointment was recorded as missed, so it can no longer be cancelled; please contact the practice.",
    "request_id_reused": "This request id was already used for another appointment; please send the request again with a new request id.",
    "invalid_request": REASON_TEXT_TOO_LONG,
}


@dataclass(frozen=True)
class Rejection:
    reason: str  # one of the contract's rejection reasons
    message: str  # one sentence a person can act on


def check_request(status: str | None, reason_text: str | None) -> Rejection | None:
    """What booking refuses itself, before any policy: unknown, closed, or malformed requests."""
    if status is None:
        return Rejection("not_found", REJECTION_MESSAGES["not_found"])
    if status == "cancelled":
        return Rejection("already_cancelled", REJECTION_MESSAGES["already_cancelled"])
    if status == "completed":
        return Rejection("already_completed", REJECTION_MESSAGES["already_completed"])
    if status == "no_show":
        # The contract has no reason of its own for this; a missed appointment is closed.
        return Rejection("already_completed", REJECTION_MESSAGES["already_no_show"])
    if reason_text is not None and len(reason_text) > REASON_TEXT_MAX_CHARS:
        return Rejection("invalid_request", REJECTION_MESSAGES["invalid_request"])
    return None


@dataclass(frozen=True)
class TimeTrust:
    """How far a request's own time may lie from its Kafka record's timestamp and still be
    believed (docs/rules.md, "Time and trust"): a little before it (the request waited in the
    upstream system's outbox), hardly after it (clocks disagree by a little, never by minutes)."""

    before: timedelta = timedelta(minutes=10)
    after: timedelta = timedelta(minutes=2)

    def decide_at(self, claimed: datetime, record_time: datetime | None) -> datetime:
        """The time to decide by: the claim when it is within the tolerance, else the record's.

        The record's timestamp is kept on a replay, so a replay decides the same.
        """
        if record_time is None or record_time - self.before <= claimed <= record_time + self.after:
            return claimed
        return record_time


def status_label(actor_kind: str, channel: str) -> str:
    """`Cancelled online` when a patient cancelled through the portal, else `Cancelled`."""
    return "Cancelled online" if actor_kind == "patient" and channel == "patient_portal" else "Cancelled"


def later_occurrences(starts_at: datetime, series: list[tuple[str, datetime, str]]) -> list[str]:
    """The booking ids of a series' scheduled occurrences after `starts_at`, in time order."""
    return [bid for bid, at, status in sorted(series, key=lambda s: s[1]) if at > starts_at and status == "scheduled"]


@dataclass(frozen=True)
class WaitingPatient:
    waitlist_id: str
    service_code: str | None
    practitioner_id: str | None
    joined_at: datetime


def next_in_line(service_code: str, practitioner_id: str, waiting: list[WaitingPatient]) -> WaitingPatient | None:
    """The longest-waiting patient who waits for this slot's service and practitioner.

    An entry that names a service (or a practitioner) matches only slots of it; one that names
    neither takes any slot of the practice.
    """
    matches = [
        w
        for w in waiting
        if (w.service_code is None or w.service_code == service_code)
        and (w.practitioner_id is None or w.practitioner_id == practitioner_id)
    ]
    return min(matches, key=lambda w: (w.joined_at, w.waitlist_id), default=None)


def rate(part: int, whole: int) -> float | None:
    """A share as a fraction rounded to 4 places (None when there is nothing to divide)."""
    return round(part / whole, 4) if whole else None


# --- second release (issue 17): the no-show sweep and accepted offers ----------------------------


def sweep_due_at(starts_at: datetime, grace_minutes: int) -> datetime:
    """When a booking nothing happened to becomes a suspected no-show: its start + the grace."""
    return starts_at + timedelta(minutes=grace_minutes)


def no_show_suspected(
    *,
    status: str,
    starts_at: datetime,
    grace_minutes: int,
    arrived: bool,
    suspected_before: bool,
    sweep_since: datetime | None,
    now: datetime,
) -> bool:
    """Whether the sweep reports the booking now (docs/rules.md, no-show sweep): still scheduled
    (not completed, cancelled or recorded as a no-show), no arrival, not reported before, its
    start + grace reached (at that instant, not a moment later), and started after the practice
    turned the sweep on."""
    if status != "scheduled" or arrived or suspected_before or sweep_since is None:
        return False
    return starts_at >= sweep_since and sweep_due_at(starts_at, grace_minutes) <= now


OfferAnswer = str  # "fill" | "filled_already" | "unknown_offer" | "not_live"


def offer_acceptance(
    *,
    offer_status: str | None,
    offer_booking_id: str | None,
    offer_waitlist_id: str | None,
    expires_at: datetime | None,
    filled: bool,
    booking_id: str,
    waitlist_id: str,
    accepted_at: datetime,
) -> OfferAnswer:
    """What `waitlist.offer_accepted` does (docs/rules.md, waitlist): only the live offer fills the
    slot — open (or taken by the patient's new booking already) and accepted by its expiry, for
    this slot and this waitlist entry; once."""
    if offer_status is None or offer_booking_id != booking_id or offer_waitlist_id != waitlist_id:
        return "unknown_offer"
    if filled:
        return "filled_already"
    if offer_status == "accepted" or (offer_status == "open" and expires_at is not None and accepted_at <= expires_at):
        return "fill"
    return "not_live"

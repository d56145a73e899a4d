"""The professional's reliability score and holds (docs/rules.md#professional-reliability-score-and-holds). Pure: plain values in, plain values out, no I/O.

Guarantees:
- The score is `BASE_SCORE` plus the sum of the ledger's deltas; nothing is clamped.
- A penalty is the one the policy decided (`score_delta`, `hold_days` on the decision): the
  table lives once, in cancellation-policy. A decision without its `score_delta` breaks the
  contract (`DecisionWithoutPenalty`): it is refused, never guessed.
- Holds stack: a new hold starts when the latest hold of the professional that was not excused
  ends (one that expired since still ran its course), or at the event's own time when none runs
  beyond it, so the same history always gives the same windows, whenever the expiry job ran.
- Three holds that were not excused, placed within 365 days of each other, suspend the account;
  excused holds never count.
- An approved excuse lifts its booking's hold at once; its penalty leaves the score at the next
  recalculation as one compensating `excused` ledger entry per booking, so running the
  recalculation again finds nothing left to do. A rejected excuse changes nothing.
- Ids of ledger entries and holds are derived from what caused them (uuid5), so a redelivery
  can only ever name the row that exists already.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Literal

BASE_SCORE = 100  # every professional starts here
COMPLETION_DELTA = 10
SUSPENSION_HOLDS = 3
SUSPENSION_WINDOW = timedelta(days=365)

# How scoring names a penalty, by the decision's classification. The numbers are the policy's.
SCORE_CAUSE = {"timely": "cancelled", "late": "late_cancelled", "no_show": "no_show"}
HOLD_CAUSE = {"late": "late_cancellation", "no_show": "no_show"}
PENALTY_CAUSES = frozenset(SCORE_CAUSE.values())  # ledger causes an excuse can take out
EXCUSED_CAUSE = "excused"  # the compensating ledger entry of an approved excuse

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cancellations:scoring")

HoldStatus = Literal["running", "lifted"]


@dataclass(frozen=True)
class Penalty:
    """What one professional cancellation or no-show costs."""

    delta: int
    cause: str  # score.changed cause: cancelled | late_cancelled | no_show
    hold_days: int | None  # None or 0: no hold
    hold_cause: str | None  # hold.placed cause: late_cancellation | no_show


@dataclass(frozen=True)
class Hold:
    """A hold as scoring keeps it: `occurred_at` is the time of the event that caused it."""

    hold_id: str
    status: HoldStatus
    occurred_at: datetime
    starts_at: datetime
    ends_at: datetime
    lift_cause: str | None = None  # excused | expired, once lifted
    # Set when an excuse was approved, also for a hold that had expired already (it then stays
    # lifted as expired, and stops counting towards suspension all the same).
    excused_at: datetime | None = None
    # Set when the professional was reinstated after the suspension this hold led to: it no
    # longer counts towards the next suspension (it still ran its course).
    cleared_at: datetime | None = None

    @property
    def excused(self) -> bool:
        return self.excused_at is not None or (self.status == "lifted" and self.lift_cause == "excused")


def score(deltas: Iterable[int]) -> int:
    """The score of a ledger: the base plus every delta, unclamped."""
    return BASE_SCORE + sum(deltas)


class DecisionWithoutPenalty(ValueError):
    """A professional's cancellation or no-show whose decision carries no `score_delta`. The
    policy always decides one, so the message breaks the contract: it is dead-lettered, since
    it would fail the same way every time."""


def penalty(classification: str, score_delta: int | None, hold_days: int | None) -> Penalty:
    """The penalty the policy decided for a professional cancellation (classification
    timely|late|no_show) or a professional no-show (classification no_show): `score_delta`, and
    a hold of `hold_days` when that is more than zero."""
    if classification not in SCORE_CAUSE:
        raise ValueError(f"no professional penalty for classification {classification!r}")
    if score_delta is None:
        raise DecisionWithoutPenalty(
            f"the decision on a professional's cancellation or no-show ({classification}) carries no"
            " score_delta; only the cancellation policy decides a penalty"
        )
    if hold_days is not None and hold_days < 0:
        raise ValueError(f"a hold cannot last {hold_days} days")
    has_hold = bool(hold_days)
    # A hold on a timely cancellation (a policy could decide one) is a late-cancellation hold.
    hold_cause = HOLD_CAUSE.get(classification, "late_cancellation") if has_hold else None
    return Penalty(
        delta=score_delta,
        cause=SCORE_CAUSE[classification],
        hold_days=hold_days if has_hold else None,
        hold_cause=hold_cause,
    )


def next_hold_window(holds: Sequence[Hold], at: datetime, days: int) -> tuple[datetime, datetime]:
    """(starts_at, ends_at) of a new hold of `days` days caused at `at`.

    It starts when the latest hold that was not excused ends, or at `at` when none lasts beyond
    it. Whether the expiry job has marked a hold lifted yet does not matter: a late event stacks
    the same behind a hold that has expired since, so replays decide the same. An excused hold
    holds nothing.
    """
    if days <= 0:
        raise ValueError("a hold lasts at least one day")
    holding_ends = [h.ends_at for h in holds if not h.excused and h.ends_at > at]
    starts_at = max([at, *holding_ends])
    return starts_at, starts_at + timedelta(days=days)


def suspension_holds(
    holds: Sequence[Hold],
    *,
    threshold: int = SUSPENSION_HOLDS,
    window: timedelta = SUSPENSION_WINDOW,
) -> list[str] | None:
    """The ids of the unexcused holds that suspend the account, or None when they do not.

    Any `threshold` unexcused holds whose causing events lie within `window` of each other
    suspend (holds cleared by a reinstatement do not count); the answer lists every unexcused hold of the earliest such window, oldest first.
    Order-independent, so events handled out of order decide the same.
    """
    counted = sorted(
        (h for h in holds if not h.excused and h.cleared_at is None), key=lambda h: (h.occurred_at, h.hold_id)
    )
    for i, first in enumerate(counted):
        within = [h for h in counted[i:] if h.occurred_at - first.occurred_at <= window]
        if len(within) >= threshold:
            return [h.hold_id for h in within]
    return None


def ledger_entry_id(professional_id: str, booking_id: str, cause: str) -> str:
    """One ledger entry per professional, booking and cause: a booking is penalised once."""
    return str(uuid.uuid5(_NAMESPACE, f"ledger:{professional_id}:{booking_id}:{cause}"))


def hold_id(professional_id: str, booking_id: str) -> str:
    """One hold per professional and booking."""
    return str(uuid.uuid5(_NAMESPACE, f"hold:{professional_id}:{booking_id}"))


# --- excuses -----------------------------------------------------------------------------------

# Why scoring refused an excuse; the contract has no event for it, so it is recorded and shown
# in the read API (the message itself was valid: it is not a dead letter).
UNKNOWN_PROFESSIONAL = "unknown_professional"
UNKNOWN_BOOKING = "unknown_booking"
UNKNOWN_EXCUSE = "unknown_excuse"
REJECTED_BY_REVIEWER = "rejected_by_reviewer"


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


def assess_submission(
    professional_id: str, booking_id: str, *, professional_known: bool, penalised: bool
) -> Refusal | None:
    """None when the excuse can be reviewed; otherwise why it is refused at once: there must be
    a penalty recorded for that professional and booking to excuse."""
    if not professional_known:
        return Refusal(
            UNKNOWN_PROFESSIONAL,
            f"Scoring has recorded nothing for professional {professional_id}, so there is no penalty to excuse.",
        )
    if not penalised:
        return Refusal(
            UNKNOWN_BOOKING,
            f"No penalty is recorded for booking {booking_id} of professional {professional_id}, so there is nothing to excuse.",
        )
    return None


ReviewOutcome = Literal["approve", "reject", "unknown", "already_decided"]


def review_outcome(status: str | None, decision: str) -> ReviewOutcome:
    """What a review does to an excuse in `status` (None: never submitted).

    The first decision stands: an excuse already approved or rejected (by a reviewer or by
    scoring itself) is not decided again, so a second review changes nothing.
    """
    if status is None:
        return "unknown"
    if status != "pending":
        return "already_decided"
    if decision == "approved":
        return "approve"
    if decision == "rejected":
        return "reject"
    raise ValueError(f"no excuse decision {decision!r}")


def unknown_excuse(excuse_id: str) -> Refusal:
    return Refusal(UNKNOWN_EXCUSE, f"Excuse {excuse_id} was reviewed but never submitted, so nothing was excused.")


def reviewer_rejection(reviewer_id: str) -> Refusal:
    return Refusal(REJECTED_BY_REVIEWER, f"Reviewer {reviewer_id} rejected the excuse; the penalty and hold stand.")


# --- recalculation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A ledger entry as the recalculation needs it."""

    booking_id: str | None
    delta: int
    cause: str


@dataclass(frozen=True)
class Compensation:
    """A compensating `excused` entry: the delta that takes one booking's penalty out."""

    booking_id: str
    delta: int


def compensations(entries: Iterable[Entry], excused_bookings: Sequence[str]) -> list[Compensation]:
    """The entries a recalculation adds: for each booking with an approved excuse (in the order
    given), minus its penalties, unless the ledger has taken them out already. Idempotent: fed
    the ledger with these entries added, it returns nothing."""
    penalties: dict[str, int] = {}
    compensated: set[str] = set()
    for e in entries:
        if e.booking_id is None:
            continue
        if e.cause in PENALTY_CAUSES:
            penalties[e.booking_id] = penalties.get(e.booking_id, 0) + e.delta
        elif e.cause == EXCUSED_CAUSE:
            compensated.add(e.booking_id)
    out: list[Compensation] = []
    for booking_id in dict.fromkeys(excused_bookings):  # each booking once, first order kept
        if booking_id in compensated or not penalties.get(booking_id):
            continue
        out.append(Compensation(booking_id=booking_id, delta=-penalties[booking_id]))
    return out


def nightly_run_due(now: datetime, hour_utc: int, last_run: date | None) -> date | None:
    """The date of the nightly run due at `now`, or None: today's run is due from `hour_utc`
    (UTC) on, once; a replica that was down at that hour catches up when it starts."""
    if not 0 <= hour_utc <= 23:
        raise ValueError("the recalculation hour is 0..23 (UTC)")
    today = now.date()
    if now.time() < time(hour_utc) or last_run == today:
        return None
    return today


def until_next_run(now: datetime, hour_utc: int) -> timedelta:
    """How long from `now` until the next `hour_utc` o'clock (UTC)."""
    at = datetime.combine(now.date(), time(hour_utc), tzinfo=now.tzinfo)
    if at <= now:
        at += timedelta(days=1)
    return at - now


# --- patient standing (docs/rules.md#patient-standing) -----------------------------------------

Standing = Literal["good", "deposit_required", "prepayment_required", "online_booking_blocked"]
CaseKind = Literal["no_show", "late_cancellation"]

STANDING_WORDS = {
    "good": "good standing",
    "deposit_required": "a deposit is required",
    "prepayment_required": "prepayment is required",
    "online_booking_blocked": "online booking is blocked",
}


@dataclass(frozen=True)
class StandingRules:
    """A practice's `standing` settings (the contract's defaults: off, 365 days, first forgiven,
    2 / 3 / 4)."""

    enabled: bool = False
    window_days: int = 365
    forgive_first: bool = True
    deposit_required_after: int = 2
    prepayment_required_after: int = 3
    online_booking_blocked_after: int = 4


@dataclass(frozen=True)
class PatientStanding:
    """A patient's standing at one practice at one time: the cases in the window, how many count
    (after forgiveness), the standing, and when it next changes by itself (a case ages out)."""

    standing: Standing
    count: int
    in_window: int
    next_review_at: datetime | None


def patient_standing(cases: Iterable[datetime], at: datetime, rules: StandingRules) -> PatientStanding:
    """The standing at `at` from the times of the patient's cases that were neither excused nor
    waived. A case counts from its own time until `window_days` later (then it has aged out: a
    case exactly `window_days` old no longer counts); cases after `at` do not count yet. With
    `forgive_first` the first case in the window is forgiven."""
    window = timedelta(days=rules.window_days)
    in_window = sorted(t for t in cases if t <= at and at - t < window)
    count = max(0, len(in_window) - 1) if rules.forgive_first else len(in_window)
    if count >= rules.online_booking_blocked_after:
        standing: Standing = "online_booking_blocked"
    elif count >= rules.prepayment_required_after:
        standing = "prepayment_required"
    elif count >= rules.deposit_required_after:
        standing = "deposit_required"
    else:
        standing = "good"
    return PatientStanding(
        standing=standing,
        count=count,
        in_window=len(in_window),
        next_review_at=in_window[0] + window if in_window else None,
    )


def standing_reason(now: PatientStanding, previous: Standing, rules: StandingRules) -> str:
    """Why the standing moved, in words a person can read (no personal data)."""
    cases = (
        "1 no-show or late cancellation" if now.in_window == 1 else f"{now.in_window} no-shows or late cancellations"
    )
    forgiven = " (the first forgiven)" if rules.forgive_first and now.in_window else ""
    direction = "up" if STANDINGS.index(now.standing) > STANDINGS.index(previous) else "back down"
    thresholds = (
        f"deposit from {rules.deposit_required_after}, prepayment from {rules.prepayment_required_after},"
        f" online booking blocked from {rules.online_booking_blocked_after}"
    )
    return (
        f"{cases} at this practice in the last {rules.window_days} days{forgiven}, {now.count} counted:"
        f" moved {direction} to {STANDING_WORDS[now.standing]} ({thresholds})."
    )


STANDINGS: tuple[Standing, ...] = ("good", "deposit_required", "prepayment_required", "online_booking_blocked")


def counts_towards_standing(actor_kind: str, classification: str, fee_waived: bool | None) -> CaseKind | None:
    """Whether a cancellation is a case of the patient's: a late one by the patient or by staff
    (on the patient's behalf) whose fee was not waived. The professional's and the system's
    cancellations are never the patient's."""
    if fee_waived or actor_kind not in ("patient", "staff") or classification not in ("late", "no_show"):
        return None
    return "late_cancellation"


def case_id(booking_id: str, kind: str) -> str:
    """One case per booking and kind: a booking counts once, however often its event arrives."""
    return str(uuid.uuid5(_NAMESPACE, f"case:{booking_id}:{kind}"))


# --- offices in a marketplace (docs/rules.md#offices-in-a-marketplace) -------------------------

OFFICE_BASE_SCORE = 100  # every office starts here; the deltas are the policy's


def office_entry_id(practice_id: str, booking_id: str) -> str:
    """One office entry per practice and booking: a cancellation costs the office once."""
    return str(uuid.uuid5(_NAMESPACE, f"office:{practice_id}:{booking_id}"))


def office_score(deltas: Iterable[int]) -> int:
    return OFFICE_BASE_SCORE + sum(deltas)


def reinstatement_id(professional_id: str, reinstated_at: datetime) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"reinstated:{professional_id}:{reinstated_at.isoformat()}"))

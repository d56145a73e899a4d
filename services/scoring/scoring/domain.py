"""The professional's reliability score and holds (RULES.md "Professional reliability score and
holds"). Pure: plain values in, plain values out, no I/O.

Guarantees:
- The score is `BASE_SCORE` plus the sum of the ledger's deltas; nothing is clamped.
- A penalty is the one the policy decided (`score_delta`, `hold_days` on the decision); only a
  decision without them falls back to the RULES.md table for its classification.
- Holds stack: a new hold starts when the latest running hold of the professional ends, or at
  the event's own time when none runs, so the same history always gives the same windows.
- Three holds that were not excused, placed within 365 days of each other, suspend the account;
  excused holds never count.
- Ids of ledger entries and holds are derived from what caused them (uuid5), so a redelivery
  can only ever name the row that exists already.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

BASE_SCORE = 100  # every professional starts here
COMPLETION_DELTA = 10
SUSPENSION_HOLDS = 3
SUSPENSION_WINDOW = timedelta(days=365)

# RULES.md table, by classification: (score delta, hold days). Used only when a decision does
# not carry its own numbers; the policy's numbers win so a changed rule is applied once, there.
PENALTY_TABLE: dict[str, tuple[int, int | None]] = {
    "timely": (-10, None),
    "late": (-50, 7),
    "no_show": (-100, 14),
}
SCORE_CAUSE = {"timely": "cancelled", "late": "late_cancelled", "no_show": "no_show"}
HOLD_CAUSE = {"late": "late_cancellation", "no_show": "no_show"}

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

    @property
    def excused(self) -> bool:
        return self.status == "lifted" and self.lift_cause == "excused"


def score(deltas: Iterable[int]) -> int:
    """The score of a ledger: the base plus every delta, unclamped."""
    return BASE_SCORE + sum(deltas)


def penalty(classification: str, score_delta: int | None = None, hold_days: int | None = None) -> Penalty:
    """The penalty of a professional cancellation (classification timely|late|no_show) or of a
    professional no-show (classification no_show), from the decision's numbers when it has them."""
    if classification not in PENALTY_TABLE:
        raise ValueError(f"no professional penalty for classification {classification!r}")
    table_delta, table_days = PENALTY_TABLE[classification]
    delta = table_delta if score_delta is None else score_delta
    days = table_days if score_delta is None and hold_days is None else hold_days
    if days is not None and days < 0:
        raise ValueError(f"a hold cannot last {days} days")
    has_hold = bool(days)
    # A hold on a timely cancellation (a policy could decide one) is a late-cancellation hold.
    hold_cause = HOLD_CAUSE.get(classification, "late_cancellation") if has_hold else None
    return Penalty(delta=delta, cause=SCORE_CAUSE[classification], hold_days=days if has_hold else None, hold_cause=hold_cause)


def next_hold_window(holds: Sequence[Hold], at: datetime, days: int) -> tuple[datetime, datetime]:
    """(starts_at, ends_at) of a new hold of `days` days caused at `at`.

    It starts when the latest running hold ends, or at `at` when no running hold lasts beyond
    it (a hold past its end is over even before the expiry job marks it lifted).
    """
    if days <= 0:
        raise ValueError("a hold lasts at least one day")
    running_ends = [h.ends_at for h in holds if h.status == "running" and h.ends_at > at]
    starts_at = max([at, *running_ends])
    return starts_at, starts_at + timedelta(days=days)


def suspension_holds(
    holds: Sequence[Hold],
    *,
    threshold: int = SUSPENSION_HOLDS,
    window: timedelta = SUSPENSION_WINDOW,
) -> list[str] | None:
    """The ids of the unexcused holds that suspend the account, or None when they do not.

    Any `threshold` unexcused holds whose causing events lie within `window` of each other
    suspend; the answer lists every unexcused hold of the earliest such window, oldest first.
    Order-independent, so events handled out of order decide the same.
    """
    counted = sorted((h for h in holds if not h.excused), key=lambda h: (h.occurred_at, h.hold_id))
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

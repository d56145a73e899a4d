"""The scoring service's two clocks, hold expiry and the nightly recalculation: two background
jobs on shared.background.

Guarantees, with any number of replicas:
- Hold expiry: every poll, due professionals (a running hold whose `ends_at` has passed) are
  claimed with `FOR UPDATE SKIP LOCKED` on their row, the aggregate every scoring write locks;
  their due holds are lifted (cause expired) by one statement per batch, and each `hold.lifted`
  is written to the outbox in the same transaction. A hold is lifted once, by one replica, even
  when no message arrives. When the batch's statement fails for good, its professionals are
  lifted one at a time: one whose holds cannot be lifted (a failure for good, logged and
  counted) keeps them running and is left out of the claim for `FAILED_RETRY`, so it is not
  claimed every poll and never keeps the professionals after it waiting; the others' holds are
  lifted.
- Nightly recalculation: once per UTC date, from `RECALCULATION_HOUR_UTC` on. The run claims its
  date in `recalculation_runs` in the same transaction as its ledger entries and outbox rows,
  so exactly one replica's run commits per night; a replica that was down at the hour catches
  up when it starts, and a run that failed is tried again at the next check. Running it again
  moves nothing and emits nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from shared.background import DueWork, WorkUnit
from shared.consumer import is_transient
from shared.contracts.scoring import HoldLifted
from shared.logging import get_logger
from shared.topics import SCORING_EVENTS

from . import domain, handlers, repository
from .settings import ScoringSettings

log = get_logger(__name__)


# A professional whose holds could not be lifted is claimed again after this long.
FAILED_RETRY = timedelta(minutes=15)


@dataclass(frozen=True)
class Expiry:
    """A claimed professional: the `hold.lifted` of each hold the claim lifted (with the time the
    hold ended), or why its holds could not be lifted."""

    professional_id: str
    lifted: Sequence[tuple[HoldLifted, datetime]] = ()
    error: Exception | None = None


def hold_expiry(settings: ScoringSettings) -> DueWork[Expiry, Any]:
    """Background job: lift the holds whose end has passed, a batch of professionals per
    transaction, every HOLD_EXPIRY_POLL_SECONDS."""
    return DueWork(
        name="expire_holds",
        claim=claim_expired_holds,
        act=lift_expired_holds,
        savepoint=False,  # the claim lifted the holds; act only emits
        on_failure=defer_expiry,
        key=lambda expiry: expiry.professional_id,
        interval_seconds=settings.hold_expiry_poll_seconds,
        batch_size=settings.hold_expiry_batch_size,
    )


async def claim_expired_holds(conn: asyncpg.Connection, now: datetime, limit: int) -> list[Expiry]:
    """Lock up to `limit` due professionals and lift their expired holds with one statement
    (under a savepoint, with their `hold.lifted` built, so a lift whose event cannot be made is
    undone); when that fails for good, one professional at a time, each under a savepoint of its
    own, so one that cannot be lifted comes back as an `Expiry` with its error."""
    professional_ids = await repository.lock_professionals_with_due_holds(conn, now, limit)
    if not professional_ids:
        return []
    try:
        async with conn.transaction():
            lifted = _events(await repository.expire_holds(conn, professional_ids, now))
    except Exception as exc:
        if is_transient(exc):
            raise
        log.warning("lifting a batch of expired holds failed; lifting them one at a time", error=type(exc).__name__)
        return [await _expire_one(conn, professional_id, now) for professional_id in professional_ids]
    by_professional: dict[str, list[tuple[HoldLifted, datetime]]] = {pid: [] for pid in professional_ids}
    for event in lifted:
        by_professional[event[0].professional_id].append(event)
    return [Expiry(pid, tuple(events)) for pid, events in by_professional.items()]


def _events(rows: Sequence[asyncpg.Record]) -> list[tuple[HoldLifted, datetime]]:
    return [
        (HoldLifted.new(hold_id=r["hold_id"], professional_id=r["professional_id"], cause="expired"), r["ends_at"])
        for r in rows
    ]


async def _expire_one(conn: asyncpg.Connection, professional_id: str, now: datetime) -> Expiry:
    try:
        async with conn.transaction():
            return Expiry(professional_id, tuple(_events(await repository.expire_holds(conn, [professional_id], now))))
    except Exception as exc:
        if is_transient(exc):
            raise
        return Expiry(professional_id, error=exc)


async def lift_expired_holds(unit: WorkUnit[Any], expiry: Expiry) -> None:
    """The claimed professional's running holds that ended by now, lifted by the claim (cause
    expired, at their end): each one's `hold.lifted`. A professional the claim could not lift
    is a failed row."""
    if expiry.error is not None:
        raise expiry.error
    for lifted, ended_at in expiry.lifted:
        # when it happened: the hold ended then
        unit.emit(SCORING_EVENTS, lifted, subject=lifted.professional_id, time=ended_at)
        log.info("hold expired", hold_id=lifted.hold_id, professional_id=lifted.professional_id)


async def defer_expiry(unit: WorkUnit[Any], expiry: Expiry, error: Exception) -> None:
    """A professional whose holds could not be lifted: out of the claim for `FAILED_RETRY`."""
    await repository.defer_hold_expiry(unit.conn, expiry.professional_id, unit.now + FAILED_RETRY)


def nightly_recalculation(settings: ScoringSettings) -> DueWork[date, Any]:
    """Background job: the nightly recalculation, once per UTC date across replicas, from
    RECALCULATION_HOUR_UTC on; it looks every RECALCULATION_CHECK_SECONDS and wakes at the hour."""
    hour = settings.recalculation_hour_utc

    async def claim(conn: asyncpg.Connection, now: datetime, limit: int) -> list[date]:
        """Today's date once its hour has come, until a run of it is recorded (here or by another
        replica). The run itself claims the date (`run_recalculation`), so a run that fails
        leaves it unclaimed and is tried again."""
        run_date = domain.nightly_run_due(now, hour, last_run=None)
        if run_date is None or await repository.recalculation_ran(conn, run_date):
            return []
        return [run_date]

    return DueWork(
        name="recalculate_nightly",
        claim=claim,
        act=recalculate_night,
        key=lambda run_date: run_date.isoformat(),
        interval_seconds=settings.recalculation_check_seconds,
        batch_size=1,  # one date a day
        next_due=lambda now: domain.until_next_run(now, hour).total_seconds() + 0.5,
    )


async def recalculate_night(unit: WorkUnit[Any], run_date: date) -> None:
    await run_recalculation(unit, run_date)


async def run_recalculation(unit: WorkUnit[Any], run_date: date) -> int | None:
    """The run of `run_date`, in the unit's transaction: None when another run claimed that date,
    else how many `score.changed` it emitted."""
    if not await repository.claim_recalculation_run(unit.conn, run_date):
        return None
    changes = await handlers.recalculate(unit.conn, None, at=unit.now, cause_id=f"recalculation:{run_date.isoformat()}")
    await repository.finish_recalculation_run(
        unit.conn, run_date, professionals=len({c.professional_id for c in changes}), entries=len(changes)
    )
    for change in changes:
        unit.emit(SCORING_EVENTS, change, subject=change.professional_id, time=unit.now)
    log.info("nightly recalculation ran", run_date=run_date.isoformat(), score_changes=len(changes))
    return len(changes)

"""The scoring service's two clocks, hold expiry and the nightly recalculation: two background
jobs on shared.background.

Guarantees, with any number of replicas:
- Hold expiry: every poll, due professionals (a running hold whose `ends_at` has passed) are
  claimed with `FOR UPDATE SKIP LOCKED` on their row, the aggregate every scoring write locks;
  their due holds are lifted (cause expired) and each `hold.lifted` is written to the outbox in
  the same transaction. A hold is lifted once, by one replica, even when no message arrives.
  A professional whose holds cannot be lifted (a failure for good, logged) keeps them running
  and is tried again at the next poll; the others' holds are lifted.
- Nightly recalculation: once per UTC date, from `RECALCULATION_HOUR_UTC` on. The run claims its
  date in `recalculation_runs` in the same transaction as its ledger entries and outbox rows,
  so exactly one replica's run commits per night; a replica that was down at the hour catches
  up when it starts, and a run that failed is tried again at the next check. Running it again
  moves nothing and emits nothing.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import asyncpg

from shared.background import DueWork, WorkUnit
from shared.contracts.scoring import HoldLifted
from shared.logging import get_logger
from shared.topics import SCORING_EVENTS

from . import domain, handlers, repository
from .settings import ScoringSettings

log = get_logger(__name__)


def hold_expiry(settings: ScoringSettings) -> DueWork[str, Any]:
    """Background job: lift the holds whose end has passed, a batch of professionals per
    transaction, every HOLD_EXPIRY_POLL_SECONDS."""
    return DueWork(
        name="expire_holds",
        claim=repository.lock_professionals_with_due_holds,
        act=lift_expired_holds,
        key=lambda professional_id: professional_id,
        interval_seconds=settings.hold_expiry_poll_seconds,
        batch_size=settings.hold_expiry_batch_size,
    )


async def lift_expired_holds(unit: WorkUnit[Any], professional_id: str) -> None:
    """The claimed professional's running holds that ended by now: lifted (cause expired, at
    their end), each with its `hold.lifted`."""
    for row in await repository.expire_holds(unit.conn, [professional_id], unit.now):
        unit.emit(
            SCORING_EVENTS,
            HoldLifted.new(hold_id=row["hold_id"], professional_id=row["professional_id"], cause="expired"),
            subject=row["professional_id"],
            time=row["ends_at"],  # when it happened: the hold ended then
        )
        log.info("hold expired", hold_id=row["hold_id"], professional_id=row["professional_id"])


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

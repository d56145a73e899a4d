"""The scoring service's two clocks: hold expiry and the nightly recalculation.

Guarantees, with any number of replicas:
- Hold expiry: every poll, due professionals (a running hold whose `ends_at` has passed) are
  claimed with `FOR UPDATE SKIP LOCKED` on their row, the aggregate every scoring write locks;
  their due holds are lifted (cause expired) and each `hold.lifted` is written to the outbox in
  the same transaction. A hold is lifted once, by one replica, even when no message arrives.
- Nightly recalculation: once per UTC date, from `RECALCULATION_HOUR_UTC` on. The run claims its
  date in `recalculation_runs` in the same transaction as its ledger entries and outbox rows,
  so exactly one replica's run commits per night; a replica that was down at the hour catches
  up when it starts. Running it again moves nothing and emits nothing.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

import asyncpg

from shared import outbox
from shared.contracts.scoring import HoldLifted
from shared.logging import get_logger
from shared.topics import SCORING_EVENTS

from . import domain, handlers, repository
from .settings import ScoringSettings

if TYPE_CHECKING:
    from shared.service import Runtime

log = get_logger(__name__)


async def expire_holds(service: Runtime) -> None:
    """Background task: lift the holds whose end has passed; forever."""
    settings: ScoringSettings = service.settings  # type: ignore[assignment]
    assert service.pool is not None
    source = f"service/{service.definition.name}"
    while not service.stopping:
        claimed, lifted = await lift_expired_holds(
            service.pool, now=datetime.now(UTC), batch_size=settings.hold_expiry_batch_size, source=source
        )
        if lifted:
            service.wake_relay()
        if claimed < settings.hold_expiry_batch_size:
            await asyncio.sleep(settings.hold_expiry_poll_seconds)


async def lift_expired_holds(pool: asyncpg.Pool, *, now: datetime, batch_size: int, source: str) -> tuple[int, int]:
    """One transaction: claim due professionals, lift their ended holds, write `hold.lifted`.
    Returns (professionals claimed, holds lifted)."""
    async with pool.acquire() as conn, conn.transaction():
        professional_ids = await repository.lock_professionals_with_due_holds(conn, now, batch_size)
        if not professional_ids:
            return 0, 0
        lifted = await repository.expire_holds(conn, professional_ids, now)
        await outbox.write(
            conn,
            [
                outbox.outgoing(
                    SCORING_EVENTS,
                    HoldLifted.new(hold_id=row["hold_id"], professional_id=row["professional_id"], cause="expired"),
                    subject=row["professional_id"],
                    source=source,
                    correlation_id=None,
                    time=row["ends_at"],  # when it happened: the hold ended then
                )
                for row in lifted
            ],
        )
    for row in lifted:
        log.info("hold expired", hold_id=row["hold_id"], professional_id=row["professional_id"])
    return len(professional_ids), len(lifted)


async def recalculate_nightly(service: Runtime) -> None:
    """Background task: the nightly recalculation, once per date across replicas; forever."""
    settings: ScoringSettings = service.settings  # type: ignore[assignment]
    assert service.pool is not None
    source = f"service/{service.definition.name}"
    last_run: date | None = None
    while not service.stopping:
        now = datetime.now(UTC)
        run_date = domain.nightly_run_due(now, settings.recalculation_hour_utc, last_run)
        if run_date is not None:
            if await run_recalculation(service.pool, run_date, now=now, source=source):
                service.wake_relay()
            last_run = run_date  # run here or by another replica: done for today either way
        wait = domain.until_next_run(now, settings.recalculation_hour_utc).total_seconds()
        await asyncio.sleep(min(settings.recalculation_check_seconds, wait + 0.5))


async def run_recalculation(pool: asyncpg.Pool, run_date: date, *, now: datetime, source: str) -> int | None:
    """The run of `run_date`, in one transaction; None when another run claimed that date,
    else how many `score.changed` it wrote."""
    async with pool.acquire() as conn, conn.transaction():
        if not await repository.claim_recalculation_run(conn, run_date):
            return None
        changes = await handlers.recalculate(conn, None, at=now, cause_id=f"recalculation:{run_date.isoformat()}")
        await repository.finish_recalculation_run(
            conn, run_date, professionals=len({c.professional_id for c in changes}), entries=len(changes)
        )
        await outbox.write(
            conn,
            [
                outbox.outgoing(
                    SCORING_EVENTS, change, subject=change.professional_id, source=source, correlation_id=None, time=now
                )
                for change in changes
            ],
        )
    log.info("nightly recalculation ran", run_date=run_date.isoformat(), score_changes=len(changes))
    return len(changes)

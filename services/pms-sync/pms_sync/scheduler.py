"""Resends unacknowledged syncs, gives up on them after the last attempt, and sends the ones
whose wait for their upstream request (the chart note) is over: one background job on
shared.background.

Guarantees: safe with any number of replicas — due rows are claimed with
`FOR UPDATE SKIP LOCKED`, and the resend (an outbox row) and the new attempt count commit in
one transaction, so a sync is resent once per due time, never twice by two replicas. A resend
is the stored command unchanged, with the same `sync_id`. After `PMS_MAX_ATTEMPTS` sends
without an ack the sync fails: `pms.sync_failed` and `pms.manual_update_required`, once.
A sync that cannot be sent at all (its stored command or request unreadable) fails the same
way at once, so the practice updates by hand and the syncs behind it are not held up.
Timeouts fire from the clock, not from traffic: nothing needs to arrive for a sync to be settled.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from shared.background import DueWork, WorkUnit
from shared.logging import get_logger
from shared.topics import PMS_SYNC_EVENTS

from . import domain, repository
from .handlers import fail_syncs, send_waiting
from .settings import PmsSyncSettings

log = get_logger(__name__)


def overdue_syncs(settings: PmsSyncSettings) -> DueWork[asyncpg.Record, Any]:
    """Background job: every PMS_RETRY_POLL_SECONDS, settle the syncs whose wait is over,
    PMS_RETRY_BATCH_SIZE per transaction."""

    async def claim(conn: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
        return await repository.lock_due_syncs(conn, limit)  # due by the database's clock

    async def settle(unit: WorkUnit[Any], sync: asyncpg.Record) -> None:
        """Send a sync whose wait for its request is over, resend one whose ack is overdue, or
        give up on it after the last attempt."""
        if sync["status"] == "waiting":
            # The request may have come in since (a replica raced us to it): use it if so.
            request = await repository.get_request(unit.conn, sync["request_id"])
            command = await send_waiting(unit.conn, sync, request, settings)
            unit.emit(sync["topic"], command, subject=sync["booking_id"])
        elif domain.on_timeout(sync["attempts"], settings.pms_max_attempts) == "resend":
            attempt = sync["attempts"] + 1
            wait = domain.ack_wait_seconds(
                attempt,
                timeout_seconds=settings.pms_ack_timeout_seconds,
                max_backoff_seconds=settings.pms_max_backoff_seconds,
            )
            await repository.mark_resent(unit.conn, sync["sync_id"], attempt, wait)
            command = domain.COMMAND_MODELS[sync["action"]].model_validate(json.loads(sync["command"]))
            unit.emit(sync["topic"], command, subject=sync["booking_id"])
            log.info("sync resent", sync_id=sync["sync_id"], integration=sync["integration"], attempt=attempt)
        else:
            await _give_up(unit, sync, domain.no_ack_error(sync["attempts"]))

    async def cannot_send(unit: WorkUnit[Any], sync: asyncpg.Record, error: Exception) -> None:
        await _give_up(unit, sync, f"the command could not be sent ({type(error).__name__})")

    return DueWork(
        name="resend_unacknowledged",
        claim=claim,
        act=settle,
        on_failure=cannot_send,
        # Keyed by booking and carrying the causing event's correlation id, like the first send.
        correlation=lambda sync: sync["correlation_id"],
        key=lambda sync: sync["sync_id"],
        interval_seconds=settings.pms_retry_poll_seconds,
        batch_size=settings.pms_retry_batch_size,
    )


async def _give_up(unit: WorkUnit[Any], sync: asyncpg.Record, error: str) -> None:
    [payloads] = await fail_syncs(unit.conn, [(sync, error)])
    for payload in payloads:
        unit.emit(PMS_SYNC_EVENTS, payload, subject=sync["booking_id"])
    log.warning("sync failed", sync_id=sync["sync_id"], integration=sync["integration"], error=error)

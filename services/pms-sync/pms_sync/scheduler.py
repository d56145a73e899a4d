"""Resends unacknowledged syncs, gives up on them after the last attempt, and sends the ones
whose wait for their upstream request (the chart note) is over.

Guarantees: safe with any number of replicas — due rows are claimed with
`FOR UPDATE SKIP LOCKED`, and the resend (an outbox row) and the new attempt count commit in
one transaction, so a sync is resent once per due time, never twice by two replicas. A resend
is the stored command unchanged, with the same `sync_id`. After `PMS_MAX_ATTEMPTS` sends
without an ack the sync fails: `pms.sync_failed` and `pms.manual_update_required`, once.
Timeouts fire from the clock, not from traffic: nothing needs to arrive for a sync to be settled.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import asyncpg

from shared import outbox
from shared.contracts.base import Payload
from shared.logging import get_logger
from shared.topics import PMS_SYNC_EVENTS

from . import domain, repository
from .handlers import fail_sync, send_waiting
from .settings import PmsSyncSettings

if TYPE_CHECKING:
    from shared.service import Runtime

log = get_logger(__name__)


async def resend_unacknowledged(service: Runtime) -> None:
    """Background task: every poll, settle the syncs whose ack is overdue; forever."""
    settings: PmsSyncSettings = service.settings  # type: ignore[assignment]
    assert service.pool is not None
    while not service.stopping:
        handled = await settle_overdue(service.pool, settings, source=f"service/{service.definition.name}")
        if handled:
            service.wake_relay()
        if handled < settings.pms_retry_batch_size:
            await asyncio.sleep(settings.pms_retry_poll_seconds)


async def settle_overdue(pool: asyncpg.Pool, settings: PmsSyncSettings, *, source: str) -> int:
    """One batch, in one transaction: send each sync whose wait for its request is over, resend
    or give up on each whose ack is overdue; returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        due = await repository.lock_due_syncs(conn, settings.pms_retry_batch_size)
        events: list[outbox.OutgoingEvent] = []
        for sync in due:
            if sync["status"] == "waiting":
                # The request may have come in since (a replica raced us to it): use it if so.
                request = await repository.get_request(conn, sync["request_id"])
                command = await send_waiting(conn, sync, request, settings)
                events.append(_event(sync["topic"], command, sync, source))
            elif domain.on_timeout(sync["attempts"], settings.pms_max_attempts) == "resend":
                attempt = sync["attempts"] + 1
                wait = domain.ack_wait_seconds(
                    attempt,
                    timeout_seconds=settings.pms_ack_timeout_seconds,
                    max_backoff_seconds=settings.pms_max_backoff_seconds,
                )
                await repository.mark_resent(conn, sync["sync_id"], attempt, wait)
                command = domain.COMMAND_MODELS[sync["action"]].model_validate(json.loads(sync["command"]))
                events.append(_event(sync["topic"], command, sync, source))
                log.info("sync resent", sync_id=sync["sync_id"], integration=sync["integration"], attempt=attempt)
            else:
                error = domain.no_ack_error(sync["attempts"])
                for payload in await fail_sync(conn, sync, error):
                    events.append(_event(PMS_SYNC_EVENTS, payload, sync, source))
                log.warning("sync failed", sync_id=sync["sync_id"], integration=sync["integration"], error=error)
        await outbox.write(conn, events)
    return len(due)


def _event(topic: str, payload: Payload, sync: asyncpg.Record, source: str) -> outbox.OutgoingEvent:
    # Keyed by booking and carrying the causing event's correlation id, like the first send.
    return outbox.outgoing(topic, payload, subject=sync["booking_id"], source=source, correlation_id=sync["correlation_id"])

"""One async function per message type: load, decide, save, emit.

Handlers reach the database only through their ports (`PmsSyncDeps`, the unit's deps), so
tests/handlers runs them against fakes. They read no clock: a sync's waits are counted from the
database's `now()`, the clock the scheduler's due rows are compared with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.consumer import Unit
from shared.contracts.base import Payload
from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.common import Actor
from shared.contracts.pms_sync import (
    PmsCancelBooking,
    PmsManualUpdateRequired,
    PmsRecordNoShow,
    PmsSyncCompleted,
    PmsSyncFailed,
)
from shared.contracts.upstream import (
    BookingCancellationRequested,
    BookingNoShowReported,
    PmsSyncAcknowledged,
    PracticeConfigured,
)
from shared.logging import get_logger
from shared.topics import PMS_SYNC_EVENTS

from . import domain, fee_repository
from . import repository as sql_repository
from .settings import PmsSyncSettings

log = get_logger(__name__)


@dataclass(frozen=True)
class PmsSyncDeps:
    """The handlers' ports and the retry settings (the first ack wait, the wait for a request),
    built by `app.definition`'s `make_deps`."""

    settings: PmsSyncSettings
    # repository.py, or anything with the same functions (tests/handlers: an in-memory fake).
    repository: Any
    # fee_repository.py (pms.update_fee, fees.py), or a fake of it.
    fees: Any = fee_repository


async def configure_practice(unit: Unit[PmsSyncDeps], event: PracticeConfigured) -> None:
    await unit.deps.repository.configure_integration(
        unit.conn, event.practice_id, event.pms.integration, configured_at=unit.event.envelope.time
    )


async def remember_cancellation_request(unit: Unit[PmsSyncDeps], event: BookingCancellationRequested) -> None:
    # booking.cancelled does not carry the chart note; the request does.
    await unit.deps.repository.remember_request(
        unit.conn, event.request_id, event.booking_id, "cancellation", event.actor.to_json_dict(), event.chart_note
    )
    await _send_waiting(unit, event.request_id)


async def remember_no_show_report(unit: Unit[PmsSyncDeps], event: BookingNoShowReported) -> None:
    # booking.no_show_recorded carries neither the reporter nor the chart note; the report does.
    await unit.deps.repository.remember_request(
        unit.conn, event.request_id, event.booking_id, "no_show", event.actor.to_json_dict(), event.chart_note
    )
    await _send_waiting(unit, event.request_id)


async def sync_cancellation(unit: Unit[PmsSyncDeps], event: BookingCancelled) -> None:
    integration = await _integration(unit, event.practice_id)
    how = domain.route(integration)
    if how == "none":
        return
    request = await unit.deps.repository.get_request(unit.conn, event.request_id)
    chart_note = request["chart_note"] if request else None
    wait = domain.waits_for_request("cancel_booking", event.channel, request_seen=request is not None)
    # The occurrences of a series cancelled with it are cancelled in the PMS too, each by itself.
    for booking_id in [event.booking_id, *event.series_booking_ids]:
        if how == "manual":
            await _ask_for_manual_update(unit, booking_id, event.practice_id, integration, "cancel_booking")
        else:
            command = domain.cancel_command(event, booking_id, chart_note)
            await _send(unit, integration, event.request_id, command, wait_for_request=wait)


async def sync_no_show(unit: Unit[PmsSyncDeps], event: BookingNoShowRecorded) -> None:
    integration = await _integration(unit, event.practice_id)
    how = domain.route(integration)
    if how == "none":
        return
    if how == "manual":
        await _ask_for_manual_update(unit, event.booking_id, event.practice_id, integration, "record_no_show")
        return
    request = await unit.deps.repository.get_request(unit.conn, event.request_id)
    reporter = _actor_of(request) if request else None
    command = domain.no_show_command(event, reporter, request["chart_note"] if request else None)
    wait = domain.waits_for_request("record_no_show", None, request_seen=request is not None)
    await _send(unit, integration, event.request_id, command, wait_for_request=wait)


async def acknowledge_sync(unit: Unit[PmsSyncDeps], event: PmsSyncAcknowledged) -> None:
    repository = unit.deps.repository
    sync = await repository.lock_sync(unit.conn, event.sync_id)
    if sync is None:
        log.warning("acknowledgement of a sync we never sent; ignored", sync_id=event.sync_id)
        return
    step = domain.on_ack(sync["status"], event.status)
    if step == "ignore":
        log.info("duplicate or late acknowledgement; nothing to do", sync_id=event.sync_id, status=sync["status"])
        return
    if step == "complete":
        await repository.complete_sync(unit.conn, event.sync_id, event.external_ref)
        unit.emit(
            PMS_SYNC_EVENTS,
            PmsSyncCompleted.new(
                sync_id=sync["sync_id"],
                booking_id=sync["booking_id"],
                integration=sync["integration"],
                attempts=sync["attempts"],
            ),
            subject=sync["booking_id"],
        )
        return
    error = event.error or "the PMS connector reported an error"
    for payload in await fail_sync(unit.conn, sync, error, repository=repository):
        unit.emit(PMS_SYNC_EVENTS, payload, subject=sync["booking_id"])


async def fail_sync(
    conn: asyncpg.Connection,
    sync: asyncpg.Record,
    error: str,
    *,
    repository: Any = sql_repository,  # what scheduler.py calls it with: repository.py itself
) -> list[Payload]:
    """End a sync as failed; returns what to publish: `pms.sync_failed` and the manual update."""
    error = error[:500]
    await repository.fail_sync(conn, sync["sync_id"], error)
    failed = PmsSyncFailed.new(
        sync_id=sync["sync_id"],
        booking_id=sync["booking_id"],
        integration=sync["integration"],
        attempts=sync["attempts"],
        error=error,
    )
    if sync["action"] not in domain.PUBLISHED_MANUAL_ACTIONS:
        # A fee update: pms.manual_update_required cannot name it (the contract's actions are the
        # cancellation and the no-show); staff find it in the read API's manual updates.
        message = domain.manual_message(sync["action"], sync["integration"], error, failed=True)
        await repository.add_manual_update(
            conn,
            booking_id=sync["booking_id"],
            practice_id=sync["practice_id"],
            integration=sync["integration"],
            action=sync["action"],
            message=message,
            sync_id=sync["sync_id"],
        )
        return [failed]
    manual = domain.manual_update(
        sync["booking_id"], sync["practice_id"], sync["integration"], sync["action"], error, failed=True
    )
    await _record_manual_update(repository, conn, manual, sync_id=sync["sync_id"])
    return [failed, manual]


async def _integration(unit: Unit[PmsSyncDeps], practice_id: str) -> str:
    return await unit.deps.repository.integration_of(unit.conn, practice_id) or domain.DEFAULT_INTEGRATION


async def send_waiting(
    conn: asyncpg.Connection,
    sync: asyncpg.Record,
    request: asyncpg.Record | None,
    settings: PmsSyncSettings,
    *,
    repository: Any = sql_repository,  # what scheduler.py calls it with: repository.py itself
) -> PmsCancelBooking | PmsRecordNoShow:
    """Send a waiting command now (attempt 1): completed from its request when there is one;
    returns the command to publish. The request arrived, or the wait for it is over."""
    command = domain.COMMAND_MODELS[sync["action"]].model_validate(json.loads(sync["command"]))
    if request is not None:
        command = domain.with_request(command, _actor_of(request), request["chart_note"])
    else:
        log.warning(
            "upstream request not seen in time; sent without its chart note",
            sync_id=sync["sync_id"],
            request_id=sync["request_id"],
        )
    await repository.mark_first_sent(conn, sync["sync_id"], command.to_json_dict(), _first_ack_wait(settings))
    return command


def _actor_of(request: asyncpg.Record) -> Actor:
    return Actor.model_validate(json.loads(request["actor"]))


def _first_ack_wait(settings: PmsSyncSettings) -> float:
    return domain.ack_wait_seconds(
        1, timeout_seconds=settings.pms_ack_timeout_seconds, max_backoff_seconds=settings.pms_max_backoff_seconds
    )


async def _send_waiting(unit: Unit[PmsSyncDeps], request_id: str) -> None:
    """The request is in: send the commands that were waiting for it (normally none)."""
    repository = unit.deps.repository
    waiting = await repository.lock_waiting_syncs(unit.conn, request_id)
    request = await repository.get_request(unit.conn, request_id) if waiting else None
    for sync in waiting:
        command = await send_waiting(unit.conn, sync, request, unit.deps.settings, repository=repository)
        unit.emit(sync["topic"], command, subject=sync["booking_id"])


async def _send(
    unit: Unit[PmsSyncDeps],
    integration: str,
    request_id: str,
    command: PmsCancelBooking | PmsRecordNoShow,
    *,
    wait_for_request: bool = False,
) -> None:
    settings = unit.deps.settings
    topic = domain.topic_of(integration)
    added = await unit.deps.repository.add_sync(
        unit.conn,
        sync_id=command.sync_id,
        booking_id=command.booking_id,
        practice_id=command.practice_id,
        request_id=request_id,
        integration=integration,
        action=command.event_type.removeprefix("pms."),
        topic=topic,
        command=command.to_json_dict(),
        correlation_id=unit.event.correlation_id,
        waiting=wait_for_request,
        wait_seconds=settings.pms_request_wait_seconds if wait_for_request else _first_ack_wait(settings),
    )
    if not added:  # the same change again (a replayed cancellation) is the same sync: sent once
        return
    if wait_for_request:
        log.info("sync waits for its upstream request (chart note)", sync_id=command.sync_id, request_id=request_id)
        return
    unit.emit(topic, command, subject=command.booking_id)


async def _ask_for_manual_update(
    unit: Unit[PmsSyncDeps], booking_id: str, practice_id: str, integration: str, action: str
) -> None:
    manual = domain.manual_update(booking_id, practice_id, integration, action)
    await _record_manual_update(unit.deps.repository, unit.conn, manual, sync_id=None)
    unit.emit(PMS_SYNC_EVENTS, manual, subject=booking_id)


async def _record_manual_update(
    repository: Any, conn: asyncpg.Connection, manual: PmsManualUpdateRequired, *, sync_id: str | None
) -> None:
    await repository.add_manual_update(
        conn,
        booking_id=manual.booking_id,
        practice_id=manual.practice_id,
        integration=manual.integration,
        action=manual.action,
        message=manual.message,
        sync_id=sync_id,
    )

"""One async function per message type: load, decide, save, emit.

Handlers reach the database only through their ports (`PmsSyncDeps`, the unit's deps), so
tests/handlers runs them against fakes. They read no clock: a sync's waits are counted from the
database's `now()`, the clock the scheduler's due rows are compared with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from shared.consumer import SetBased, Unit
from shared.contracts.base import Payload
from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.common import Actor
from shared.contracts.pms_sync import (
    PmsCancelBooking,
    PmsManualUpdateRequired,
    PmsRecordNoShow,
    PmsSyncCompleted,
    PmsSyncFailed,
    PmsUpdateFee,
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


async def remember_cancellation_requests(
    units: Sequence[Unit[PmsSyncDeps]], events: Sequence[BookingCancellationRequested]
) -> None:
    """Cancellation requests, set-based: booking.cancelled does not carry the chart note, the
    request does, so it is remembered (one statement for the set) and the commands that were
    waiting for it go out (normally none)."""
    await _remember(units, events, "cancellation")


remember_cancellation_request = SetBased(remember_cancellation_requests)


async def remember_no_show_reports(units: Sequence[Unit[PmsSyncDeps]], events: Sequence[BookingNoShowReported]) -> None:
    """No-show reports, set-based: booking.no_show_recorded carries neither the reporter nor the
    chart note; the report does."""
    await _remember(units, events, "no_show")


remember_no_show_report = SetBased(remember_no_show_reports)


async def _remember(
    units: Sequence[Unit[PmsSyncDeps]],
    events: Sequence[BookingCancellationRequested | BookingNoShowReported],
    kind: str,
) -> None:
    # The first record of a request id is the one remembered (a replay changes nothing), and the
    # commands waiting for it are that record's to send.
    first: dict[str, tuple[Unit[PmsSyncDeps], BookingCancellationRequested | BookingNoShowReported]] = {}
    for unit, event in zip(units, events, strict=True):
        first.setdefault(event.request_id, (unit, event))
    conn, repository = units[0].conn, units[0].deps.repository
    await repository.remember_requests(
        conn,
        [
            {
                "request_id": event.request_id,
                "booking_id": event.booking_id,
                "kind": kind,
                "actor": event.actor.to_json_dict(),
                "chart_note": event.chart_note,
            }
            for _, event in first.values()
        ],
    )
    await _send_waiting({request_id: unit for request_id, (unit, _) in first.items()})


async def sync_cancellations(units: Sequence[Unit[PmsSyncDeps]], events: Sequence[BookingCancelled]) -> None:
    """Cancellations, set-based: the practices' integrations read in one statement, the requests
    (chart notes) in one, the commands written in one, the manual updates in one."""
    conn, repository = units[0].conn, units[0].deps.repository
    integrations = await _integrations(units[0], [e.practice_id for e in events])
    requests = await _requests(units[0], [e.request_id for e in events if _routes(integrations, e) == "sync"])
    plan = SyncPlan()
    for unit, event in zip(units, events, strict=True):
        integration = integrations[event.practice_id]
        how = domain.route(integration)
        if how == "none":
            continue
        request = requests.get(event.request_id)
        chart_note = request["chart_note"] if request else None
        wait = domain.waits_for_request("cancel_booking", event.channel, request_seen=request is not None)
        # The occurrences of a series cancelled with it are cancelled in the PMS too, each by itself.
        for booking_id in [event.booking_id, *event.series_booking_ids]:
            if how == "manual":
                plan.ask_by_hand(unit, booking_id, event.practice_id, integration, "cancel_booking")
            else:
                command = domain.cancel_command(event, booking_id, chart_note)
                plan.send(unit, integration, event.request_id, command, wait_for_request=wait)
    await plan.carry_out(conn, repository)


sync_cancellation = SetBased(sync_cancellations)


async def sync_no_shows(units: Sequence[Unit[PmsSyncDeps]], events: Sequence[BookingNoShowRecorded]) -> None:
    """Recorded no-shows, set-based as cancellations are."""
    conn, repository = units[0].conn, units[0].deps.repository
    integrations = await _integrations(units[0], [e.practice_id for e in events])
    requests = await _requests(units[0], [e.request_id for e in events if _routes(integrations, e) == "sync"])
    plan = SyncPlan()
    for unit, event in zip(units, events, strict=True):
        integration = integrations[event.practice_id]
        how = domain.route(integration)
        if how == "none":
            continue
        if how == "manual":
            plan.ask_by_hand(unit, event.booking_id, event.practice_id, integration, "record_no_show")
            continue
        request = requests.get(event.request_id)
        reporter = _actor_of(request) if request else None
        command = domain.no_show_command(event, reporter, request["chart_note"] if request else None)
        wait = domain.waits_for_request("record_no_show", None, request_seen=request is not None)
        plan.send(unit, integration, event.request_id, command, wait_for_request=wait)
    await plan.carry_out(conn, repository)


sync_no_show = SetBased(sync_no_shows)


async def acknowledge_syncs(units: Sequence[Unit[PmsSyncDeps]], events: Sequence[PmsSyncAcknowledged]) -> None:
    """The connectors' acks, set-based: the syncs locked in one statement, completed in one,
    failed in one (with their manual updates in one). A sync acknowledged twice in one set (two
    keys) runs in rounds, so the later ack sees the sync the earlier one settled."""
    for members in rounds(list(zip(units, events, strict=True)), key=lambda m: m[1].sync_id):
        await _acknowledge([unit for unit, _ in members], [event for _, event in members])


acknowledge_sync = SetBased(acknowledge_syncs)


async def _acknowledge(units: Sequence[Unit[PmsSyncDeps]], events: Sequence[PmsSyncAcknowledged]) -> None:
    conn, repository = units[0].conn, units[0].deps.repository
    syncs = await repository.lock_syncs(conn, [e.sync_id for e in events])
    completed: list[tuple[str, str | None]] = []
    failed: list[tuple[Unit[PmsSyncDeps], Any, str]] = []
    for unit, event in zip(units, events, strict=True):
        sync = syncs.get(event.sync_id)
        if sync is None:
            log.warning("acknowledgement of a sync we never sent; ignored", sync_id=event.sync_id)
            continue
        step = domain.on_ack(sync["status"], event.status)
        if step == "ignore":
            log.debug("duplicate or late acknowledgement; nothing to do", sync_id=event.sync_id, status=sync["status"])
            continue
        if step == "complete":
            completed.append((event.sync_id, event.external_ref))
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
            continue
        failed.append((unit, sync, event.error or "the PMS connector reported an error"))
    if completed:
        await repository.complete_syncs(conn, completed)
    if failed:
        outcomes = await fail_syncs(conn, [(sync, error) for _, sync, error in failed], repository=repository)
        for (unit, sync, _), payloads in zip(failed, outcomes, strict=True):
            for payload in payloads:
                unit.emit(PMS_SYNC_EVENTS, payload, subject=sync["booking_id"])


async def fail_syncs(
    conn: Any,
    failures: list[tuple[Any, str]],
    *,
    repository: Any = sql_repository,  # what scheduler.py calls it with: repository.py itself
) -> list[list[Payload]]:
    """End those syncs (each with why) as failed, in one statement, and record what staff must
    change by hand, in one; returns what to publish for each: `pms.sync_failed` and the manual
    update."""
    failures = [(sync, error[:500]) for sync, error in failures]
    await repository.fail_syncs(conn, [(sync["sync_id"], error) for sync, error in failures])
    manual_rows: list[dict[str, Any]] = []
    published: list[list[Payload]] = []
    for sync, error in failures:
        failed = PmsSyncFailed.new(
            sync_id=sync["sync_id"],
            booking_id=sync["booking_id"],
            integration=sync["integration"],
            attempts=sync["attempts"],
            error=error,
        )
        if sync["action"] not in domain.PUBLISHED_MANUAL_ACTIONS:
            # A fee update: pms.manual_update_required cannot name it (the contract's actions are
            # the cancellation and the no-show); staff find it in the read API's manual updates.
            message = domain.manual_message(sync["action"], sync["integration"], error, failed=True)
            manual_rows.append(
                {
                    "booking_id": sync["booking_id"],
                    "practice_id": sync["practice_id"],
                    "integration": sync["integration"],
                    "action": sync["action"],
                    "message": message,
                    "sync_id": sync["sync_id"],
                }
            )
            published.append([failed])
            continue
        manual = domain.manual_update(
            sync["booking_id"], sync["practice_id"], sync["integration"], sync["action"], error, failed=True
        )
        manual_rows.append(_manual_row(manual, sync_id=sync["sync_id"]))
        published.append([failed, manual])
    await repository.add_manual_updates(conn, manual_rows)
    return published


async def _integrations(unit: Unit[PmsSyncDeps], practice_ids: list[str]) -> dict[str, str]:
    """Each practice's integration, the default for one never configured."""
    known = await unit.deps.repository.integrations_of(unit.conn, list(dict.fromkeys(practice_ids)))
    return {practice_id: known.get(practice_id, domain.DEFAULT_INTEGRATION) for practice_id in practice_ids}


def _routes(integrations: dict[str, str], event: BookingCancelled | BookingNoShowRecorded) -> str:
    return domain.route(integrations[event.practice_id])


async def _requests(unit: Unit[PmsSyncDeps], request_ids: list[str]) -> dict[str, Any]:
    """The remembered requests among those, by id; no statement when there are none to read."""
    if not request_ids:
        return {}
    return dict(await unit.deps.repository.get_requests(unit.conn, list(dict.fromkeys(request_ids))))


def completed_command(sync: Any, request: Any | None) -> PmsCancelBooking | PmsRecordNoShow:
    """A waiting command as it goes out now: completed from its request when there is one. The
    request arrived, or the wait for it is over."""
    command = domain.COMMAND_MODELS[sync["action"]].model_validate(json.loads(sync["command"]))
    if request is not None:
        return domain.with_request(command, _actor_of(request), request["chart_note"])
    log.warning(
        "upstream request not seen in time; sent without its chart note",
        sync_id=sync["sync_id"],
        request_id=sync["request_id"],
    )
    return command


async def send_waiting(
    conn: asyncpg.Connection,
    sync: asyncpg.Record,
    request: asyncpg.Record | None,
    settings: PmsSyncSettings,
    *,
    repository: Any = sql_repository,  # what scheduler.py calls it with: repository.py itself
) -> PmsCancelBooking | PmsRecordNoShow:
    """Send one waiting command now (attempt 1); returns the command to publish."""
    command = completed_command(sync, request)
    await repository.mark_first_sent(conn, [(sync["sync_id"], command.to_json_dict(), _first_ack_wait(settings))])
    return command


def _actor_of(request: Any) -> Actor:
    return Actor.model_validate(json.loads(request["actor"]))


def _first_ack_wait(settings: PmsSyncSettings) -> float:
    return domain.ack_wait_seconds(
        1, timeout_seconds=settings.pms_ack_timeout_seconds, max_backoff_seconds=settings.pms_max_backoff_seconds
    )


async def _send_waiting(units: dict[str, Unit[PmsSyncDeps]]) -> None:
    """Those requests are in (each with the unit of the record that brought it): send the
    commands that were waiting for them, normally none; a set costs one statement then, and two
    more when some were waiting."""
    unit0 = next(iter(units.values()))
    conn, repository = unit0.conn, unit0.deps.repository
    waiting = await repository.lock_waiting_syncs(conn, list(units))
    if not waiting:
        return
    requests = await repository.get_requests(conn, list(dict.fromkeys(s["request_id"] for s in waiting)))
    ack_wait = _first_ack_wait(unit0.deps.settings)
    commands = [completed_command(sync, requests.get(sync["request_id"])) for sync in waiting]
    await repository.mark_first_sent(
        conn,
        [(sync["sync_id"], command.to_json_dict(), ack_wait) for sync, command in zip(waiting, commands, strict=True)],
    )
    for sync, command in zip(waiting, commands, strict=True):  # per request, in booking order
        units[sync["request_id"]].emit(sync["topic"], command, subject=sync["booking_id"])


Command = PmsCancelBooking | PmsRecordNoShow | PmsUpdateFee
# What a plan's step publishes: a command to a PMS, or a manual update for staff.
Commanded = Command | PmsManualUpdateRequired


@dataclass
class SyncPlan:
    """What a set of records sends to the PMS and asks staff to do by hand, written in one
    statement of each kind (`carry_out`), then published by each record's own unit in the order
    it was planned. A command is a sync of its own, idempotent by `sync_id`: one that exists
    already (a replay) or that an earlier step of the plan already holds is neither written nor
    published again."""

    # (unit, what it publishes, its sync row; None for a manual update), in the order planned
    steps: list[tuple[Unit[PmsSyncDeps], Commanded, dict[str, Any] | None]] = field(default_factory=list)

    def send(
        self,
        unit: Unit[PmsSyncDeps],
        integration: str,
        request_id: str,
        command: Command,
        *,
        wait_for_request: bool = False,
        topic: str | None = None,
    ) -> None:
        settings = unit.deps.settings
        row = {
            "sync_id": command.sync_id,
            "booking_id": command.booking_id,
            "practice_id": command.practice_id,
            "request_id": request_id,
            "integration": integration,
            "action": command.event_type.removeprefix("pms."),
            "topic": topic or domain.topic_of(integration),
            "command": command.to_json_dict(),
            "correlation_id": unit.event.correlation_id,
            "waiting": wait_for_request,
            "wait_seconds": settings.pms_request_wait_seconds if wait_for_request else _first_ack_wait(settings),
        }
        self.steps.append((unit, command, row))

    def ask_by_hand(
        self, unit: Unit[PmsSyncDeps], booking_id: str, practice_id: str, integration: str, action: str
    ) -> None:
        self.steps.append((unit, domain.manual_update(booking_id, practice_id, integration, action), None))

    async def carry_out(self, conn: Any, repository: Any) -> list[Command]:
        """Write the plan and publish it; returns the commands sent now (not those waiting)."""
        manual = [_manual_row(p, sync_id=None) for _, p, _ in self.steps if isinstance(p, PmsManualUpdateRequired)]
        rows: dict[str, dict[str, Any]] = {}
        for _, _, row in self.steps:
            if row is not None:
                rows.setdefault(row["sync_id"], row)
        if manual:
            await repository.add_manual_updates(conn, manual)
        added = await repository.add_syncs(conn, list(rows.values())) if rows else set()
        sent: list[Command] = []
        for unit, payload, row in self.steps:
            if isinstance(payload, PmsManualUpdateRequired) or row is None:
                unit.emit(PMS_SYNC_EVENTS, payload, subject=payload.booking_id)
                continue
            if row["sync_id"] not in added:  # the same change again (a replay) is the same sync: sent once
                continue
            added.discard(row["sync_id"])
            if row["waiting"]:
                log.debug("sync waits for its upstream request (chart note)", sync_id=row["sync_id"])
                continue
            unit.emit(row["topic"], payload, subject=row["booking_id"])
            sent.append(payload)
        return sent


T = TypeVar("T")


def rounds(items: Sequence[T], key: Callable[[T], Hashable]) -> list[list[T]]:
    """`items` in rounds of distinct keys: an item's round is the number of items before it with
    the same key, so items of one key keep their order, one round after the other. A set names
    each sync or charge once (its records have distinct Kafka keys); should one come twice all
    the same, the set runs in rounds, so the later record sees what the earlier one changed."""
    out: list[list[T]] = []
    seen: dict[Hashable, int] = {}
    for item in items:
        n = seen.get(key(item), 0)
        seen[key(item)] = n + 1
        if n == len(out):
            out.append([])
        out[n].append(item)
    return out


def _manual_row(manual: PmsManualUpdateRequired, *, sync_id: str | None) -> dict[str, Any]:
    return {
        "booking_id": manual.booking_id,
        "practice_id": manual.practice_id,
        "integration": manual.integration,
        "action": manual.action,
        "message": manual.message,
        "sync_id": sync_id,
    }

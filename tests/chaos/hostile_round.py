"""The hostile round of `make chaos`: the cases of `hostile.py` mixed into steady healthy traffic.

What it judges:
- the healthy requests of the round have exactly their expected effects (the load checker);
- every hostile message is refused exactly once by every service that consumes its topic: a
  `message.dead_lettered` on `dlq.<service>.v1` naming the message's topic, partition and offset
  (from the producer's send result; the dead letter may keep only a prefix of a huge message),
  or, from the service that answers that event type, a rejection with an invalid-input reason
  (`booking.cancellation_rejected` / `booking.no_show_rejected` invalid_request,
  `charge.adjustment_rejected` invalid_request, `practice.configuration_rejected`) carrying the
  message's envelope id as its correlationid. A rejection may accompany the dead letter;
- the services kept consuming: healthy messages published after the hostile ones, on the same
  partitions, had their effects (canaries on every inbound topic, and the load's own requests).

All hostile messages and canaries go to one partition per topic (`PARTITION`), in phases
(`hostile.PHASES`) so that a service never has hostile records of two topics in flight.

When a consumer stops making progress on a hostile record (it retries a batch for ever), the
round finds and skips that record so the other cases can still be judged: the service is
restarted to read one record per batch (CONSUMER_MAX_RECORDS=1), which pins the record; then
the service is stopped, its group's offset moved past that record, and it is started again —
within a time budget per service, after which the remaining cases count as not reached. When a
relay cannot publish a hostile message's dead letter for good (and does not set it aside
itself), the row is marked published so the rows behind it flow. Both are reported against the
case, and at the end every service is back in its normal configuration and past the hostile
records, so later rounds and runs start clean.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.structs import OffsetAndMetadata

from shared import topics as topic_names
from shared.asyncapi import SERVICE_MODULES as APP_MODULES
from shared.kafka import client_args
from shared.provision import SCHEMAS
from shared.testing import envelope, iso
from shared.topics import (
    BILLING_COMMANDS,
    PMS_SYNC_ACKS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
    UPSTREAM_PROFESSIONALS,
)
from tests.load import scenario as scenarios
from tests.load.checker import OUTPUT_TOPICS, Collector, Record, check, end_offsets, is_complete, outbox_backlog
from tests.load.driver import prepare, send_requests, wait_complete
from tests.load.system import System, wait_until

from . import hostile
from .hostile import REFUSE_OR_PROCESS, REJECTIONS, Case, Ids

NAME = "hostile input"
PARTITION = 0  # every hostile message and canary goes here, on every inbound topic
PRACTICE_EVENTS = getattr(topic_names, "PRACTICE_EVENTS", "practice.events.v1")
STALL_SECONDS = 6.0  # a consumer that commits nothing for this long while records wait is stuck
RELAY_STALL_SECONDS = 6.0
# Per service: time spent finding and skipping records that wedge it (each skip waits out the
# dead consumer's session, ~10 s, before the group's offset can be moved). Spent, the service is
# left where it is stuck and its remaining cases count as not reached.
UNWEDGE_BUDGET_SECONDS = 45.0
BROKER_RECORD_LIMIT = 1_048_576  # what a relay's producer can publish (max.request.size)
RELAY_BATCH = 500  # rows a relay publishes together: one it cannot publish fails them all
DEV_ENV = {"ENVIRONMENT": "development", "PAYMENT_GATEWAY": "sandbox"}


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` set where the environment does not name them, for the duration only."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def consumer_map() -> dict[str, list[str]]:
    """topic -> the services that consume it (from the services' own definitions)."""
    found: dict[str, list[str]] = defaultdict(list)
    with _environment(DEV_ENV):
        for service, module in APP_MODULES.items():
            for topic in importlib.import_module(module).definition().consumes:
                found[topic].append(service)
    return dict(found)


def _partition_of(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


# --- the round's own world: a practice, bookings for the requests, a charge, two syncs ---------


@dataclass
class World:
    run: str
    ids: Ids
    charge_booking: str  # cancelled late in setup: its charge is what adjustments name
    second_sync_booking: str  # cancelled in setup: its sync is acknowledged by the canary
    canary_booking: str  # cancelled after the hostile messages (canary)
    canary_scheduled: str  # scheduled after the hostile messages (canary)
    second_sync_id: str = ""


async def _publish(
    producer: AIOKafkaProducer, messages: list[tuple[str, str, dict[str, Any]]], partition: int | None = None
) -> list[tuple[int, int]]:
    futures = [
        await producer.send(t, json.dumps(env).encode(), key=k.encode(), partition=partition) for t, k, env in messages
    ]
    return [((md := await f).partition, md.offset) for f in futures]


async def _count(admin_dsn: str, sql: str, *args: Any) -> int:
    conn = await asyncpg.connect(admin_dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def _practice(practice_id: str, integration: str) -> dict[str, Any]:
    fee = {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}
    return {
        "practice_id": practice_id,
        "name": "Hostile round practice",
        "timezone": "Australia/Sydney",
        "locale": "en",
        "contact": {"email": f"front@{practice_id}.hostile.test", "preferred_channel": "email"},
        "fees": {
            "late_cancellation": fee,
            "no_show": {**fee, "amount": "60.00", "code": "D9986"},
            "charge_card_on_file": False,
        },
        "pms": {"integration": integration},
    }


def _scheduled(booking_id: str, practice_id: str, starts: datetime) -> tuple[str, str, dict[str, Any]]:
    return (
        UPSTREAM_BOOKINGS,
        booking_id,
        envelope(
            "booking.scheduled",
            booking_id,
            {
                "booking_id": booking_id,
                "practice_id": practice_id,
                "starts_at": iso(starts),
                "ends_at": iso(starts + timedelta(minutes=30)),
                "practitioner_id": "dr-hostile",
                "service_code": "D1110",
                "patient": {
                    "patient_id": f"{booking_id}-pat",
                    "first_name": "Hostile",
                    "email": f"{booking_id}@patients.hostile.test",
                    "portal_account": True,
                    "card_on_file": False,
                    "locale": "en",
                },
            },
            source="upstream/hostile",
        ),
    )


def _cancel(booking_id: str, now: datetime) -> tuple[str, str, dict[str, Any]]:
    return (
        UPSTREAM_BOOKINGS,
        booking_id,
        envelope(
            "booking.cancellation_requested",
            booking_id,
            {
                "request_id": f"{booking_id}-req",
                "booking_id": booking_id,
                "requested_at": iso(now),
                "actor": {"kind": "staff", "id": "staff-hostile", "roles": ["reception"]},
                "channel": "practice",
                "reason_code": "illness",
            },
            source="upstream/hostile",
        ),
    )


async def setup_world(system: System, collector: Collector, run: str, now: datetime, draft: list[Case]) -> World:
    """The practice, one booking per request case, a charge and two PMS syncs, all ready."""
    practice_id = f"hostile-{run}-practice"
    world = World(
        run,
        Ids(run, practice_id),
        f"hostile-{run}-charge",
        f"hostile-{run}-sync-b",
        f"hostile-{run}-canary-cancel",
        f"hostile-{run}-canary-scheduled",
    )
    producer = AIOKafkaProducer(**client_args(system.bootstrap), acks="all", linger_ms=5)
    await producer.start()
    try:
        await _publish(
            producer,
            [
                (
                    UPSTREAM_PRACTICES,
                    practice_id,
                    envelope(
                        "practice.configured",
                        practice_id,
                        _practice(practice_id, "praktika"),
                        source="upstream/hostile",
                    ),
                )
            ],
        )
        for table in ("cancellation_policy.practice_settings", "pms_sync.integrations", "notification.practices"):

            async def configured(table: str = table) -> bool:
                return (
                    await _count(system.admin_dsn, f"SELECT count(*) FROM {table} WHERE practice_id = $1", practice_id)
                    > 0
                )

            if not await wait_until(configured, 120):
                raise TimeoutError(f"hostile round setup: practice not in {table} in time")
        bookings = {c.sacrificial_booking: c.booking_starts_in for c in draft if c.sacrificial_booking}
        bookings |= {
            world.charge_booking: timedelta(hours=6),
            world.second_sync_booking: timedelta(hours=72),
            world.canary_booking: timedelta(hours=72),
        }
        await _publish(producer, [_scheduled(b, practice_id, now + starts) for b, starts in bookings.items()])
        ids = list(bookings)
        for sql in (
            "SELECT count(*) FROM booking.bookings WHERE booking_id = ANY($1)",
            "SELECT count(*) FROM notification.patients WHERE booking_id = ANY($1)",
        ):

            async def scheduled(sql: str = sql) -> bool:
                return await _count(system.admin_dsn, sql, ids) == len(ids)

            if not await wait_until(scheduled, 120, interval=0.5):
                raise TimeoutError(f"hostile round setup: bookings not scheduled in time ({sql})")
        await _publish(producer, [_cancel(world.charge_booking, now), _cancel(world.second_sync_booking, now)])
    finally:
        await producer.stop()

    def first(key: str, type_: str) -> dict[str, Any] | None:
        for r in collector.by_key.get(key, []):
            if r.value.get("type") == type_:
                return r.value.get("data", {})
        return None

    async def ready() -> bool:
        return all(
            (
                first(world.charge_booking, "charge.created"),
                first(world.charge_booking, "pms.cancel_booking"),
                first(world.second_sync_booking, "pms.cancel_booking"),
            )
        )

    if not await wait_until(ready, 60):
        raise TimeoutError(
            "hostile round setup: no charge.created / pms.cancel_booking for the setup cancellations"
            " (are booking, billing and pms-sync publishing?)"
        )
    world.ids.charge_id = first(world.charge_booking, "charge.created")["charge_id"]
    world.ids.sync_id = first(world.charge_booking, "pms.cancel_booking")["sync_id"]
    world.ids.sync_booking_id = world.charge_booking
    world.second_sync_id = first(world.second_sync_booking, "pms.cancel_booking")["sync_id"]
    return world


# --- canaries: healthy messages after the hostile ones, on the same partition -------------------


@dataclass
class Canary:
    topic: str
    service: str
    what: str
    sql: str | None = None  # a row the service writes when it handled the message
    arg: str | None = None
    answer_of: str | None = None  # or: an event it publishes with this correlationid
    done: bool = False


def canaries(world: World, now: datetime) -> tuple[list[tuple[str, str, dict[str, Any]]], list[Canary]]:
    run, practice = world.run, f"hostile-{world.run}-canary-practice"
    excuse = f"hostile-{run}-canary-excuse"
    adjust_env, ack_env = f"hostile-{run}-canary-adjust", f"hostile-{run}-canary-ack"
    cancel = _cancel(world.canary_booking, now)
    messages = [
        (
            UPSTREAM_PRACTICES,
            practice,
            envelope("practice.configured", practice, _practice(practice, "none"), source="upstream/hostile"),
        ),
        (
            UPSTREAM_PROFESSIONALS,
            f"hostile-{run}-canary-pro",
            envelope(
                "excuse.submitted",
                f"hostile-{run}-canary-pro",
                {
                    "excuse_id": excuse,
                    "professional_id": f"hostile-{run}-canary-pro",
                    "booking_id": world.canary_booking,
                    "document_ref": "docs://hostile/canary.pdf",
                    "submitted_at": iso(now),
                },
                source="upstream/hostile",
            ),
        ),
        (
            BILLING_COMMANDS,
            world.ids.charge_id,
            envelope(
                "charge.adjustment_requested",
                world.ids.charge_id,
                {
                    "request_id": f"hostile-{run}-canary-adjust",
                    "charge_id": world.ids.charge_id,
                    "actor": {"id": "manager-hostile", "roles": ["manager"]},
                    "amount": "30.00",
                },
                event_id=adjust_env,
                source="upstream/hostile",
            ),
        ),
        _scheduled(world.canary_scheduled, world.ids.practice_id, now + timedelta(hours=72)),
        cancel,
        (
            PMS_SYNC_ACKS,
            world.second_sync_booking,
            envelope(
                "pms.sync_acknowledged",
                world.second_sync_booking,
                {
                    "sync_id": world.second_sync_id,
                    "booking_id": world.second_sync_booking,
                    "status": "ok",
                    "external_ref": "hostile-canary",
                },
                event_id=ack_env,
                source="pms-connector/hostile",
            ),
        ),
    ]
    checks = [
        Canary(
            UPSTREAM_PRACTICES,
            "cancellation-policy",
            "practice configured",
            "SELECT count(*) FROM cancellation_policy.practice_settings WHERE practice_id = $1",
            practice,
        ),
        Canary(
            UPSTREAM_PRACTICES,
            "booking",
            "practice configured",
            "SELECT count(*) FROM booking.practices WHERE practice_id = $1",
            practice,
        ),
        Canary(
            UPSTREAM_PRACTICES,
            "notification",
            "practice configured",
            "SELECT count(*) FROM notification.practices WHERE practice_id = $1",
            practice,
        ),
        Canary(
            UPSTREAM_PRACTICES,
            "pms-sync",
            "practice configured",
            "SELECT count(*) FROM pms_sync.integrations WHERE practice_id = $1",
            practice,
        ),
        Canary(
            UPSTREAM_PROFESSIONALS,
            "scoring",
            "excuse recorded",
            "SELECT count(*) FROM scoring.excuses WHERE excuse_id = $1",
            excuse,
        ),
        Canary(BILLING_COMMANDS, "billing", "adjustment answered", answer_of=adjust_env),
        Canary(
            UPSTREAM_BOOKINGS,
            "booking",
            "booking scheduled",
            "SELECT count(*) FROM booking.bookings WHERE booking_id = $1",
            world.canary_scheduled,
        ),
        Canary(
            UPSTREAM_BOOKINGS,
            "notification",
            "patient recorded",
            "SELECT count(*) FROM notification.patients WHERE booking_id = $1",
            world.canary_scheduled,
        ),
        Canary(
            UPSTREAM_BOOKINGS,
            "pms-sync",
            "cancellation request recorded",
            "SELECT count(*) FROM pms_sync.requests WHERE request_id = $1",
            cancel[2]["data"]["request_id"],
        ),
        Canary(PMS_SYNC_ACKS, "pms-sync", "sync completed", answer_of=ack_env),
    ]
    return messages, checks


async def wait_canaries(admin_dsn: str, collector: Collector, checks: list[Canary], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(c.done for c in checks):
        for c in checks:
            if c.done:
                continue
            if c.sql is not None:
                try:
                    c.done = await _count(admin_dsn, c.sql, c.arg) > 0
                except (OSError, asyncpg.PostgresError):
                    pass
            else:
                c.done = any(
                    r.value.get("correlationid") == c.answer_of and r.value.get("source") == f"service/{c.service}"
                    for r in collector.records
                )
        await asyncio.sleep(0.5)


# --- watching the consumers and relays, and skipping what wedges them ----------------------------


@dataclass
class Monitor:
    system: System
    consumers: dict[str, list[str]]  # topic -> services
    hostile_at: dict[tuple[str, int, int], Case] = field(default_factory=dict)
    hostile_end: dict[tuple[str, int], int] = field(default_factory=dict)  # last hostile offset + 1
    by_envelope: dict[str, Case] = field(default_factory=dict)
    committed: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    mode: dict[str, str] = field(default_factory=dict)  # service -> "batch" | "single"
    spent: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    given_up: dict[str, str] = field(default_factory=dict)  # service -> why
    busy: set[str] = field(default_factory=set)
    notes: dict[int, dict[str, list[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    timeline: list[str] = field(default_factory=list)
    relay_skipped: list[str] = field(default_factory=list)
    # Consumer groups with more members than this run started: another run of the services (a
    # test suite, a second `make chaos`) shares the broker and consumes the same partitions.
    foreign: dict[str, int] = field(default_factory=dict)
    _foreign_since: dict[str, float] = field(default_factory=dict)
    _ticks: int = 0
    _last: dict[str, tuple] = field(default_factory=dict)
    _last_change: dict[str, float] = field(default_factory=dict)
    _relay_head: dict[str, tuple[int, float]] = field(default_factory=dict)
    _watch_task: asyncio.Task[None] | None = None
    _unwedging: list[asyncio.Task[None]] = field(default_factory=list)
    _started: float = field(default_factory=time.monotonic)
    started: bool = False

    @property
    def services(self) -> list[str]:
        return sorted({s for services in self.consumers.values() for s in services})

    def topics_of(self, service: str) -> list[str]:
        return [t for t, services in self.consumers.items() if service in services]

    def add(self, cases: list[Case]) -> None:
        for c in cases:
            if c.envelope_id:
                self.by_envelope[c.envelope_id] = c
            if c.offset >= 0:
                self.hostile_at[(c.topic, c.partition, c.offset)] = c
                tp = (c.topic, c.partition)
                self.hostile_end[tp] = max(self.hostile_end.get(tp, 0), c.offset + 1)

    def note(self, case: Case, service: str, text: str) -> None:
        self.notes[case.n][service].append(text)

    def log(self, text: str, quiet: bool = False) -> None:
        """A harness action, for the report (and printed as it happens unless `quiet`)."""
        line = f"[{time.monotonic() - self._started:6.1f}s] {text}"
        self.timeline.append(line)
        if not quiet:
            print(f"  hostile: {line}", flush=True)

    async def start(self) -> None:
        self._admin = AIOKafkaAdminClient(**client_args(self.system.bootstrap))
        await self._admin.start()
        self._offsets = AIOKafkaConsumer(**client_args(self.system.bootstrap), enable_auto_commit=False)
        await self._offsets.start()
        await self._offsets._client.force_metadata_update()
        self._tps = [
            TopicPartition(t, p) for t in self.consumers for p in (self._offsets.partitions_for_topic(t) or ())
        ]
        self._db = await asyncpg.connect(self.system.admin_dsn)
        self._parking = {
            schema: bool(
                await self._db.fetchval(
                    "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'outbox'"
                    " AND column_name = 'parked_at'",
                    schema,
                )
            )
            for schema in SCHEMAS.values()
        }
        for s in self.services:
            self.mode.setdefault(s, "batch")
        await self.refresh()
        self.started = True
        self._watch_task = asyncio.create_task(self._watch())

    async def halt(self) -> None:
        """Stop watching; a restart under way is finished, never cut in the middle."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
            self._watch_task = None
        await asyncio.gather(*self._unwedging, return_exceptions=True)

    async def close(self) -> None:
        await self._offsets.stop()
        await self._admin.close()
        await self._db.close()

    async def refresh(self) -> None:
        ends = await self._offsets.end_offsets(self._tps)
        self.ends = {(tp.topic, tp.partition): o for tp, o in ends.items()}
        for s in self.services:
            try:
                offsets = await self._admin.list_consumer_group_offsets(s)
            except KafkaError:
                continue
            self.committed[s] = {(tp.topic, tp.partition): om.offset for tp, om in offsets.items() if om.offset >= 0}

    def behind(self, service: str) -> list[tuple[str, int]]:
        """The hostile partitions of `service` it has not yet consumed to the end of the hostile records."""
        mine = self.committed.get(service, {})
        return [
            tp for tp in self.hostile_end if tp[0] in self.topics_of(service) and mine.get(tp, 0) < self.hostile_end[tp]
        ]

    def passed(self, service: str, case: Case) -> bool:
        return self.committed.get(service, {}).get((case.topic, case.partition), 0) > case.offset

    def stuck(self, service: str) -> bool:
        return time.monotonic() - self._last_change.get(service, time.monotonic()) > STALL_SECONDS

    async def _watch(self) -> None:
        while True:
            try:
                await self.refresh()
                now = time.monotonic()
                for s in self.services:
                    snapshot = tuple(sorted(self.committed.get(s, {}).items()))
                    if snapshot != self._last.get(s):
                        self._last[s], self._last_change[s] = snapshot, now
                    if s in self.busy or s in self.given_up or not self.behind(s):
                        continue
                    lagging = any(
                        self.ends.get(tp, 0) > self.committed.get(s, {}).get(tp, 0)
                        for t in self.topics_of(s)
                        for tp in self.ends
                        if tp[0] == t
                    )
                    if lagging and self.stuck(s):
                        self.busy.add(s)
                        self._unwedging.append(asyncio.create_task(self._unwedge(s)))
                await self._relays()
                self._ticks += 1
                if self._ticks % 4 == 0:
                    await self._check_members()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log(f"watch: {type(exc).__name__}: {str(exc)[:200]}")
            await asyncio.sleep(0.5)

    async def _check_members(self) -> None:
        now = time.monotonic()
        for s in self.services:
            if s in self.busy:
                self._foreign_since.pop(s, None)
                continue
            described = (await self._admin.describe_consumer_groups([s]))[0].to_object()["groups"][0]
            members, ours = len(described["members"]), len(self.system.procs[s])
            if members <= ours:
                self._foreign_since.pop(s, None)
                continue
            since = self._foreign_since.setdefault(s, now)
            if now - since > 2 * STALL_SECONDS and members > self.foreign.get(s, 0):
                if s not in self.foreign:
                    self.log(
                        f"{s}: its consumer group has {members} members but this run started {ours}: another run"
                        " of the services consumes the same partitions; its results may be mixed into this round's"
                    )
                self.foreign[s] = members

    async def _unwedge(self, service: str) -> None:
        started = time.monotonic()
        try:
            behind = self.behind(service)
            at = {tp: self.committed.get(service, {}).get(tp, 0) for tp in behind}
            where = ", ".join(f"{t}[{p}] offset {o}" for (t, p), o in at.items())
            if self.spent[service] + STALL_SECONDS > UNWEDGE_BUDGET_SECONDS:
                self._give_up(service, at, f"still stuck at {where}; the harness's time budget for it is spent")
                return
            if self.mode.get(service) != "single":
                self.log(
                    f"{service} stopped consuming (no commit for {STALL_SECONDS:g}s) at {where};"
                    " restarting it with one record per batch to find the record"
                )
                await self.restart(service, single=True)
                return
            culprits = [(tp, o) for tp, o in at.items() if (*tp, o) in self.hostile_at]
            if len(culprits) != 1:
                self._give_up(service, at, f"stuck at {where}, not on exactly one hostile record")
                return
            ((tp, offset),) = culprits
            case = self.hostile_at[(*tp, offset)]
            self.note(case, service, "wedged the consumer (it retried this record for ever); the harness skipped it")
            self.log(
                f"{service} wedged by case #{case.n} {case.name!r} at {tp[0]}[{tp[1]}] offset {offset}; skipping it"
            )
            await self.restart(service, single=True, commit={tp: offset + 1})
        except Exception as exc:
            self.log(f"{service}: unwedging failed: {type(exc).__name__}: {str(exc)[:300]}")
            self.given_up[service] = f"unwedging failed: {type(exc).__name__}"
        finally:
            self.spent[service] += time.monotonic() - started + STALL_SECONDS
            self._last_change[service] = time.monotonic()
            self.busy.discard(service)

    def _give_up(self, service: str, at: dict[tuple[str, int], int], why: str) -> None:
        self.given_up[service] = why
        self.log(f"{service}: {why}")
        for tp, offset in at.items():
            case = self.hostile_at.get((*tp, offset))
            if case is None:
                continue
            if self.mode.get(service) == "single":
                self.note(
                    case,
                    service,
                    "wedged the consumer: it retries this record for ever (left there:"
                    " the harness's time budget for this service is spent)",
                )
            else:
                self.note(
                    case,
                    service,
                    "the consumer stopped at the batch starting with this record (a record"
                    " from here on wedged it; the harness's time budget for this service is spent)",
                )

    async def restart(self, service: str, *, single: bool, commit: dict[tuple[str, int], int] | None = None) -> None:
        """Stop every replica, move the group's offsets (`commit`), start them again."""
        procs = self.system.procs[service]
        for p in procs:
            await asyncio.to_thread(p.kill)
        if commit:
            await self.commit(service, commit)
        for p in procs:
            p.port = 0
            if single:
                p.env["CONSUMER_MAX_RECORDS"] = "1"
            else:
                p.env.pop("CONSUMER_MAX_RECORDS", None)
            await asyncio.to_thread(p.start)
        self.mode[service] = "single" if single else "batch"
        # Until the group has settled with the new members (the dead ones' sessions must time out
        # first): only then does "no commit for a while" mean stuck again, not still joining.
        await self.wait_stable(service, members=len(procs))

    async def wait_stable(self, group: str, members: int, timeout: float = 45.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                described = (await self._admin.describe_consumer_groups([group]))[0].to_object()["groups"][0]
                if described["state"] == "Stable" and len(described["members"]) == members:
                    return True
            except (KafkaError, IndexError, KeyError):
                pass
            await asyncio.sleep(0.5)
        self.log(f"{group}: its consumer group did not settle within {timeout:g}s of the restart")
        return False

    async def commit(self, group: str, offsets: dict[tuple[str, int], int], timeout: float = 60.0) -> None:
        """Commit for a group whose members are gone (after their session timed out)."""
        deadline = time.monotonic() + timeout
        while True:
            consumer = AIOKafkaConsumer(**client_args(self.system.bootstrap), group_id=group, enable_auto_commit=False)
            await consumer.start()
            try:
                tps = {TopicPartition(*tp): OffsetAndMetadata(o, "") for tp, o in offsets.items()}
                consumer.assign(list(tps))
                await consumer.commit(tps)
                return
            except KafkaError as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not move {group}'s offsets: {exc!r}") from exc
            finally:
                await consumer.stop()
            await asyncio.sleep(1.0)

    async def _relays(self) -> None:
        """A relay that cannot publish a hostile message's dead letter for good blocks every row
        behind it: mark that row published (and say so) when it heads the outbox for too long."""
        for service, schema in SCHEMAS.items():
            parked = " AND parked_at IS NULL" if self._parking.get(schema) else ""
            row = await self._db.fetchrow(
                f"SELECT seq, key, type, octet_length(payload::text) AS bytes, payload->'data'->>'original_topic' AS topic,"
                f" payload->'data'->>'original_partition' AS partition, payload->'data'->>'original_offset' AS offset"
                f" FROM {schema}.outbox WHERE published_at IS NULL{parked} ORDER BY seq LIMIT 1"
            )
            if row is None:
                self._relay_head.pop(service, None)
                continue
            seq, since = self._relay_head.get(service, (None, 0.0))
            if seq != row["seq"]:
                self._relay_head[service] = (row["seq"], time.monotonic())
                continue
            if time.monotonic() - since < RELAY_STALL_SECONDS:
                continue
            # The relay publishes its next rows together: one it can never publish (over the
            # broker's limit) fails them all, so look at the whole batch, not only its head.
            blocking = []
            for big in await self._db.fetch(
                f'SELECT seq, type, bytes, topic, partition, "offset", correlation FROM (SELECT seq, type,'
                f" octet_length(payload::text) + octet_length(coalesce(key, '')) AS bytes,"
                f" payload->'data'->>'original_topic' AS topic, payload->'data'->>'original_partition' AS partition,"
                f" payload->'data'->>'original_offset' AS \"offset\", payload->>'correlationid' AS correlation"
                f" FROM {schema}.outbox WHERE published_at IS NULL{parked}"
                f" ORDER BY seq LIMIT {RELAY_BATCH}) head WHERE bytes > $1",
                BROKER_RECORD_LIMIT - 1024,
            ):
                case = None
                if big["topic"] and big["partition"] and big["offset"]:
                    case = self.hostile_at.get((big["topic"], int(big["partition"]), int(big["offset"])))
                case = case or self.by_envelope.get(big["correlation"] or "")
                if case is not None:
                    blocking.append((big, case))
            if not blocking:
                self.log(
                    f"{service}'s relay has not published outbox row {row['seq']} ({row['type']}, {row['bytes']} bytes)"
                    f" for {RELAY_STALL_SECONDS:g}s; no hostile dead letter too large to publish is among its next"
                    f" {RELAY_BATCH} rows, so it is left alone"
                )
                self._relay_head[service] = (row["seq"], time.monotonic() + 60)
                continue
            for big, case in blocking:
                await self._db.execute(f"UPDATE {schema}.outbox SET published_at = now() WHERE seq = $1", big["seq"])
                what = "its dead letter" if big["type"] == "message.dead_lettered" else f"the {big['type']} it caused"
                self.note(
                    case,
                    service,
                    f"{what} ({big['bytes']} bytes, over the broker's limit) could never be"
                    " published: the relay stalled on it and every event behind it waited; the"
                    " harness marked the row published",
                )
                self.log(
                    f"{service}'s relay stalled on {what.replace('its ', 'the ').replace(' it caused', '')} of case"
                    f" #{case.n} {case.name!r} ({big['bytes']} bytes); the harness marked it published"
                )
                self.relay_skipped.append(f"{service}: #{case.n}")

    async def wait_passed(self, topics: tuple[str, ...], timeout: float) -> bool:
        """Until every consumer of `topics` is past their hostile records (True), or given up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            waiting = [
                s
                for t in topics
                for s in self.consumers.get(t, [])
                if s not in self.given_up and any(tp[0] in topics for tp in self.behind(s))
            ]
            if not waiting:
                return not any(s in self.given_up for t in topics for s in self.consumers.get(t, []))
            await asyncio.sleep(0.5)
        return False

    async def restore(self) -> None:
        """Every service back to its normal configuration and past the hostile records."""
        await self.refresh()
        restarts = []
        for service in self.services:
            stuck = service in self.given_up or (self.behind(service) and self.stuck(service))
            move = {tp: self.hostile_end[tp] for tp in self.behind(service)} if stuck else None
            if self.mode.get(service) == "single" or stuck:
                self.log(
                    f"restoring {service}" + (f" (moving its offsets past the hostile records: {move})" if move else "")
                )
                restarts.append(self.restart(service, single=False, commit=move))
        for outcome in await asyncio.gather(*restarts, return_exceptions=True):
            if isinstance(outcome, BaseException):
                self.log(f"restoring failed: {type(outcome).__name__}: {str(outcome)[:300]}")


# --- the round ---------------------------------------------------------------------------------


async def publish_cases(producer: AIOKafkaProducer, cases: list[Case]) -> None:
    pending = []
    for c in cases:
        try:
            pending.append((c, await producer.send(c.topic, c.value, key=c.key, partition=PARTITION)))
        except KafkaError as exc:
            c.send_error = f"{type(exc).__name__}: {exc}"
    for c, future in pending:
        try:
            md = await future
            c.partition, c.offset = md.partition, md.offset
        except KafkaError as exc:
            c.send_error = f"{type(exc).__name__}: {exc}"


_CORRELATION = re.compile(r'"correlationid":\s*"([^"]{1,300})"')


@dataclass
class Judge:
    """Everything the services published, attributed to hostile cases."""

    cases: list[Case]
    consumers: dict[str, list[str]]
    by_position: dict[tuple[str, int, int], Case] = field(default_factory=dict)
    by_correlation: dict[str, Case] = field(default_factory=dict)
    by_tag: dict[str, Case] = field(default_factory=dict)
    dead_letters: dict[tuple[int, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    errors: dict[tuple[int, str], str] = field(default_factory=dict)  # the first dead letter's reason
    outputs: dict[int, list[Record]] = field(default_factory=lambda: defaultdict(list))
    downstream: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        envelope_ids = Counter(c.envelope_id for c in self.cases if c.envelope_id)
        for c in self.cases:
            if c.offset >= 0:
                self.by_position[(c.topic, c.partition, c.offset)] = c
            if c.envelope_id and envelope_ids[c.envelope_id] == 1:  # an id two cases share traces neither
                self.by_correlation[c.envelope_id] = c
            self.by_tag[c.tag] = c

    def _case_of_key(self, key: str | None) -> Case | None:
        if not key:
            return None
        match = re.match(r"(hostile-[0-9a-f]+-\d{4})", key)
        return self.by_tag.get(match.group(1)) if match else None

    def attribute(self, r: Record) -> Case | None:
        """The hostile case a published record stems from, if any."""
        if r.value.get("type") == "message.dead_lettered":
            data = r.value.get("data", {})
            case = self.by_position.get(
                (data.get("original_topic"), data.get("original_partition"), data.get("original_offset"))
            )
            if case is not None:
                return case
            text = data.get("original_value_text") or ""
            found = _CORRELATION.search(text[-2000:]) or _CORRELATION.search(text[:4000])
            return (self.by_correlation.get(found.group(1)) if found else None) or self._case_of_key(
                data.get("original_key")
            )
        return self.by_correlation.get(r.value.get("correlationid")) or self._case_of_key(r.key)

    def read(self, records: list[Record]) -> None:
        for r in records:
            case = self.attribute(r)
            if case is None:
                continue
            if r.value.get("type") == "message.dead_lettered":
                data = r.value.get("data", {})
                service = r.topic.removeprefix("dlq.").removesuffix(".v1")
                if (data.get("original_topic"), data.get("original_partition"), data.get("original_offset")) == (
                    case.topic,
                    case.partition,
                    case.offset,
                ):
                    self.dead_letters[(case.n, service)].add(r.value.get("id", ""))
                    self.errors.setdefault((case.n, service), str(data.get("error"))[:160])
                else:
                    self.downstream[case.n].append(
                        f"{service} dead-lettered a {data.get('original_topic')} record it caused"
                        f" ({str(data.get('error'))[:120]})"
                    )
            else:
                self.outputs[case.n].append(r)

    def verdict(self, case: Case, service: str, monitor: Monitor) -> tuple[str, str]:
        """(ok | missing | duplicated, what happened) for one consumer of one case."""
        dead = len(self.dead_letters.get((case.n, service), ()))
        rejecter, rejection_types, reasons = REJECTIONS.get(case.event_type, (None, frozenset(), frozenset()))
        mine = [r for r in self.outputs.get(case.n, []) if r.value.get("source") == f"service/{service}"]
        answers = {
            r.value.get("id"): r.value.get("data", {}).get("reason")
            for r in mine
            if service == rejecter and r.value.get("type") in rejection_types
        }
        refused = sum(1 for reason in answers.values() if reason in reasons)
        other = sorted({str(reason) for reason in answers.values() if reason not in reasons})
        emitted = sorted({str(r.value.get("type")) for r in mine if r.value.get("type") not in rejection_types})
        notes = monitor.notes.get(case.n, {}).get(service, [])
        what = []
        if dead:
            what.append(f"dead-lettered{f' ×{dead}' if dead > 1 else ''} ({self.errors.get((case.n, service), '')})")
        if answers:
            what.append(
                "rejected "
                + ", ".join(sorted({str(v) for v in answers.values()}))
                + (f" ×{len(answers)}" if len(answers) > 1 else "")
            )
        if emitted:
            what.append("processed: emitted " + ", ".join(emitted))
        what.extend(notes)
        passed = monitor.passed(service, case)
        if not dead and not refused:
            if other:
                what.append("(a rejection for another reason is not a refusal of invalid input)")
            if not emitted and not notes:
                what.append(
                    "accepted silently: no dead letter, no rejection, nothing published"
                    if passed
                    else f"not reached: {service} did not get this far"
                    + (f" ({monitor.given_up[service]})" if service in monitor.given_up else "")
                )
        text = "; ".join(what)
        if dead > 1 or refused > 1:
            return "duplicated", text
        if dead == 1 or refused == 1:
            return "ok", text
        if case.expect == REFUSE_OR_PROCESS and passed and not notes:
            return "ok", text + " (allowed: decided at the record's time)"
        if not passed and not notes and not emitted:
            return "not_reached", text
        return "missing", text


async def unpublished_dead_letters(admin_dsn: str, judge: Judge) -> dict[tuple[int, str], str]:
    """(case, service) -> why a dead letter the service wrote for the case never reached its topic:
    set aside (parked) by the relay, or still waiting behind a relay that is stuck."""
    found: dict[tuple[int, str], str] = {}
    conn = await asyncpg.connect(admin_dsn)
    try:
        for service, schema in SCHEMAS.items():
            parking = await conn.fetchval(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1"
                " AND table_name = 'outbox' AND column_name = 'parked_at'",
                schema,
            )
            parked = "parked_at IS NOT NULL AS parked, park_reason" if parking else "false AS parked, NULL"
            for row in await conn.fetch(
                f"SELECT payload->'data'->>'original_topic' AS topic, payload->'data'->>'original_partition' AS partition,"
                f" payload->'data'->>'original_offset' AS offset, {parked} AS reason, octet_length(payload::text) AS bytes,"
                f" (SELECT count(*) FROM {schema}.outbox o WHERE o.published_at IS NULL AND o.seq < outbox.seq) AS ahead"
                f" FROM {schema}.outbox WHERE published_at IS NULL AND type = 'message.dead_lettered'"
                f" AND created_at > now() - interval '1 hour'"
            ):
                if row["partition"] is None or row["offset"] is None:
                    continue
                case = judge.by_position.get((row["topic"], int(row["partition"]), int(row["offset"])))
                if case is None:
                    continue
                found[(case.n, service)] = (
                    f"its dead letter ({row['bytes']} bytes) was parked in the outbox, never published: {str(row['reason'])[:160]}"
                    if row["parked"]
                    else f"its dead letter ({row['bytes']} bytes) is written but was never published ({row['ahead']} outbox"
                    f" rows ahead of it: the relay is stuck)"
                )
    finally:
        await conn.close()
    return found


async def _backlog(admin_dsn: str) -> int:
    return sum((await outbox_backlog(admin_dsn)).values())


async def hostile_round(system: System, *, stories: int, rate: float, seed: int, input_topics: list[str]) -> dict:
    started = time.monotonic()
    consumers = consumer_map()
    collector = Collector(system.bootstrap, [*OUTPUT_TOPICS, PRACTICE_EVENTS])
    await collector.start()
    since = await end_offsets(system.bootstrap, input_topics)
    scenario = scenarios.build(stories, seed=seed)
    run = uuid.uuid4().hex[:10]
    now = datetime.now(UTC)
    monitor = Monitor(system, consumers)
    try:
        await prepare(system.bootstrap, system.admin_dsn, scenario)
        draft = hostile.build(Ids(run, f"hostile-{run}-practice"), now)
        world = await setup_world(system, collector, run, now, draft)
        cases = hostile.build(world.ids, now)
        assert [c.tag for c in cases] == [c.tag for c in draft]
        setup_seconds = time.monotonic() - started
        print(f"  hostile: {hostile.summary(cases).splitlines()[0]}; setup took {setup_seconds:.0f}s", flush=True)

        await monitor.start()
        # Two thirds of the requests on the hostile partition are held back and sent after the
        # hostile messages (and the canaries): healthy traffic behind them on the same partition.
        partitions = max(p for _, p in since) + 1 if since else 6
        on_partition = [s for s in scenario.stories if _partition_of(s.booking_id, partitions) == PARTITION]
        later = on_partition[len(on_partition) // 3 :]
        earlier = [s for s in scenario.stories if s not in later]
        sending = asyncio.create_task(
            send_requests(system.bootstrap, scenarios.Scenario(scenario.run_id, scenario.practices, earlier), rate=rate)
        )
        await asyncio.sleep(len(earlier) / rate / 3)
        producer = AIOKafkaProducer(
            **client_args(system.bootstrap), acks="all", linger_ms=5, max_request_size=2 * 1024 * 1024
        )
        await producer.start()
        try:
            for phase in hostile.PHASES:
                batch = [c for c in cases if c.topic in phase]
                phase_started = time.monotonic()
                await publish_cases(producer, batch)
                monitor.add(batch)
                passed = await monitor.wait_passed(phase, timeout=UNWEDGE_BUDGET_SECONDS + 30)
                monitor.log(
                    f"phase {', '.join(phase)}: {len(batch)} cases published"
                    + (" and consumed past by every consumer" if passed else "; NOT consumed past by every consumer")
                    + f" after {time.monotonic() - phase_started:.1f}s",
                    quiet=passed,
                )
            hostile_sent_at = time.time() * 1000
            canary_messages, canary_checks = canaries(world, datetime.now(UTC))
            await _publish(producer, canary_messages, partition=PARTITION)
        finally:
            await producer.stop()
        sent = await sending
        sent |= await send_requests(
            system.bootstrap, scenarios.Scenario(scenario.run_id, scenario.practices, later), rate=rate
        )
        # A service left stuck will not catch up: then wait only briefly for what can still come.
        wedged = bool(monitor.given_up)
        await wait_complete(scenario, collector, timeout=20 if wedged else 90, label=f"{NAME}: effects")
        await wait_canaries(system.admin_dsn, collector, canary_checks, timeout=10 if wedged else 30)
        await monitor.wait_passed(hostile.INBOUND_TOPICS, timeout=0 if wedged else 30)
        deadline = time.monotonic() + (10 if wedged else 30)
        while time.monotonic() < deadline and await _backlog(system.admin_dsn):
            await asyncio.sleep(0.5)
        await asyncio.sleep(3.0)  # a duplicate would arrive now
        await monitor.refresh()

        judge = Judge(cases, consumers)
        judge.read(collector.records)
        unpublished = await unpublished_dead_letters(system.admin_dsn, judge)
        healthy = check(
            scenario,
            collector,
            sent,
            [],
            since,
            consumers=len(consumers.get(UPSTREAM_BOOKINGS, [])),
            ignore_dead_letter=lambda r: judge.attribute(r) is not None,
        )
        backlog = await _backlog(system.admin_dsn)
        # Kept consuming: the load's requests sent after the hostile messages on their partition.
        after = [
            s
            for s in scenario.stories
            if sent.get(s.request_envelope_id or "", 0) > hostile_sent_at
            and _partition_of(s.booking_id, partitions) == PARTITION
        ]
        after_done = [s for s in after if is_complete(s, collector.by_key.get(s.booking_id, []))]
    finally:
        if monitor.started:
            await monitor.halt()
            try:
                await monitor.restore()
            finally:
                await monitor.close()
        await collector.stop()

    results = []
    for case in sorted(cases, key=lambda c: c.n):
        if case.send_error:
            results.append(
                {
                    "n": case.n,
                    "name": case.name,
                    "class": case.klass,
                    "status": "not sent",
                    "services": {},
                    "note": case.send_error,
                }
            )
            continue
        per_service = {s: judge.verdict(case, s, monitor) for s in consumers.get(case.topic, [])}
        for service, (verdict, what) in per_service.items():
            why = unpublished.get((case.n, service))
            if why is not None and verdict != "ok":
                per_service[service] = (
                    "missing",
                    why if what.startswith(("accepted silently", "not reached")) else f"{what}; {why}",
                )
        verdicts = {v for v, _ in per_service.values()}
        status = next((v for v in ("duplicated", "missing", "not_reached") if v in verdicts), "refused")
        results.append(
            {
                "n": case.n,
                "name": case.name,
                "class": case.klass,
                "topic": case.topic,
                "offset": case.offset,
                "bytes": case.size,
                "expect": case.expect,
                "status": status,
                "services": {s: {"verdict": v, "what": w} for s, (v, w) in per_service.items()},
                "downstream": judge.downstream.get(case.n, []),
            }
        )

    kept = {f"{c.topic} → {c.service} ({c.what})": c.done for c in canary_checks}
    counts = Counter(r["status"] for r in results)
    ok = (
        healthy.ok
        and backlog == 0
        and all(kept.values())
        and len(after_done) == len(after)
        and counts["refused"] == len(results)
    )
    return {
        "fault": NAME,
        "requests": healthy.requests,
        "complete": healthy.complete,
        "lost": healthy.lost,
        "duplicated": healthy.duplicated,
        "second_emails": 0,
        "second_charges": 0,
        "out_of_order": healthy.out_of_order,
        "unexpected": healthy.unexpected,
        "dead_lettered": "-",
        "outbox_backlog": backlog,
        "fault_seconds": round(time.monotonic() - started, 1),
        "hostile_sent": len(results) - counts["not sent"],
        "hostile_refused": counts["refused"],
        "hostile_missing": counts["missing"] + counts["not_reached"],
        "hostile_not_reached": counts["not_reached"],
        "hostile_duplicated": counts["duplicated"],
        "kept_consuming": f"{sum(kept.values())}/{len(kept)} canaries, {len(after_done)}/{len(after)} later requests",
        "ok": ok,
        "problems": healthy.problems[:10],
        "hostile": {
            "cases": results,
            "canaries": kept,
            "timeline": monitor.timeline,
            "foreign_consumers": monitor.foreign,
            "later_requests": {"sent": len(after), "complete": len(after_done)},
            "uncovered_event_types": hostile.uncovered_event_types(),
        },
    }


def report(row: dict) -> str:
    """Per class, then per failing case: what each consuming service did with it."""
    h = row["hostile"]
    lines = [
        f"\n== {NAME}: {row['hostile_sent']} sent, {row['hostile_refused']} refused, {row['hostile_missing']} missing"
        f" (of which {row['hostile_not_reached']} not reached: a consumer was stuck before them),"
        f" {row['hostile_duplicated']} duplicated; kept consuming: {row['kept_consuming']} =="
    ]
    per_class: dict[str, Counter[str]] = defaultdict(Counter)
    failing_services: dict[str, set[str]] = defaultdict(set)
    for r in h["cases"]:
        per_class[r["class"]][r["status"]] += 1
        for s, v in r["services"].items():
            if v["verdict"] not in ("ok", "not_reached"):
                failing_services[r["class"]].add(s)
    rows = [("class", "sent", "refused", "missing", "(not reached)", "duplicated", "not refused by")]
    for klass, c in sorted(per_class.items(), key=lambda kv: (kv[1]["refused"] == sum(kv[1].values()), kv[0])):
        rows.append(
            (
                klass,
                str(sum(c.values())),
                str(c["refused"]),
                str(c["missing"] + c["not_reached"]),
                str(c["not_reached"]),
                str(c["duplicated"]),
                ", ".join(sorted(failing_services[klass])) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) for r in rows]
    failing = [r for r in h["cases"] if r["status"] not in ("refused", "not_reached")]
    if failing:
        lines.append(f"\nfailing cases ({len(failing)}; what each consumer that did not refuse it once did):")
        for r in failing:
            lines.append(f"  #{r['n']} {r['name']} [{r['status']}]")
            for s, v in r["services"].items():
                if v["verdict"] not in ("ok", "not_reached"):
                    lines.append(f"      {s}: {v['verdict']}: {v['what']}")
                elif v["verdict"] == "not_reached":
                    lines.append(f"      {s}: not reached")
            for d in r.get("downstream", [])[:3]:
                lines.append(f"      downstream: {d}")
            if r.get("note"):
                lines.append(f"      {r['note']}")
    if h.get("foreign_consumers"):
        lines.append(
            "\nWARNING: consumer groups had members this run did not start (another test or chaos run on the"
            " same broker): "
            + ", ".join(f"{s} ({n} members)" for s, n in h["foreign_consumers"].items())
            + "; what those members did is mixed into the verdicts above"
        )
    unreached: dict[str, list[int]] = defaultdict(list)
    for r in h["cases"]:
        for s, v in r["services"].items():
            if v["verdict"] == "not_reached":
                unreached[s].append(r["n"])
    for s, ns in sorted(unreached.items()):
        lines.append(
            f"  not reached by {s}: {len(ns)} case(s), #{', #'.join(map(str, ns[:25]))}{' …' if len(ns) > 25 else ''}"
        )
    stopped = [k for k, done in h["canaries"].items() if not done]
    if stopped:
        lines.append(
            "\nstopped consuming (no effect of a healthy message published after the hostile ones on "
            f"partition {PARTITION}): " + "; ".join(stopped)
        )
    if h["later_requests"]["sent"] != h["later_requests"]["complete"]:
        lines.append(
            f"later requests on partition {PARTITION}: {h['later_requests']['complete']}/{h['later_requests']['sent']} complete"
        )
    if h["timeline"]:
        lines.append("\ntimeline (phases, and what the harness did about stuck consumers and relays):")
        lines += [f"  {t}" for t in h["timeline"]]
    if h["uncovered_event_types"]:
        lines.append(
            f"\nno hostile template for: {', '.join(h['uncovered_event_types'])} (add one to tests/chaos/hostile.py)"
        )
    return "\n".join(lines)

"""Reads everything the services publish during a run and checks it against the scenario:
per booking, every expected effect exactly once (lost / duplicated), per-booking order kept,
dead letters exactly the injected poison, outboxes drained; and times each request.

A redelivered envelope (same id twice) is at-least-once delivery, not a duplicate effect:
effects are counted by distinct envelope id.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.kafka import client_args
from shared.provision import SCHEMAS
from shared.topics import (
    BILLING_EVENTS,
    BOOKING_EVENTS,
    NOTIFICATION_EVENTS,
    PMS_INTEGRATION_TOPICS,
    PMS_SYNC_EVENTS,
    POLICY_DECISIONS,
    SCORING_EVENTS,
    SERVICES,
    dead_letter_topic,
)

from .scenario import COUNTED_TYPES, Scenario

OUTPUT_TOPICS = [
    POLICY_DECISIONS,
    BOOKING_EVENTS,
    BILLING_EVENTS,
    NOTIFICATION_EVENTS,
    SCORING_EVENTS,
    PMS_SYNC_EVENTS,
    *PMS_INTEGRATION_TOPICS.values(),
    *(dead_letter_topic(s) for s in SERVICES),
]


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    value: dict[str, Any]


class Collector:
    """Consumes the output topics from the moment it starts (positions resolved up front)."""

    def __init__(self, bootstrap: str, topics: list[str] = OUTPUT_TOPICS) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.records: list[Record] = []
        self.by_key: dict[str, list[Record]] = defaultdict(list)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            **client_args(self.bootstrap), enable_auto_commit=False, max_partition_fetch_bytes=4 * 1024 * 1024
        )
        await self._consumer.start()
        await self._consumer._client.force_metadata_update()
        partitions = [TopicPartition(t, p) for t in self.topics for p in (self._consumer.partitions_for_topic(t) or ())]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for tp in partitions:
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            for records in (await self._consumer.getmany(timeout_ms=200, max_records=5000)).values():
                for r in records:
                    try:
                        value = json.loads(r.value) if r.value else {}
                    except ValueError:
                        value = {}
                    rec = Record(r.topic, r.partition, r.offset, r.timestamp, r.key.decode() if r.key else None, value)
                    self.records.append(rec)
                    if rec.key:
                        self.by_key[rec.key].append(rec)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer:
            await self._consumer.stop()


@dataclass
class Verdict:
    requests: int = 0
    complete: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    unexpected: int = 0
    dead_lettered: int = 0
    poison_expected: int = 0
    outbox_backlog: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.lost == self.duplicated == self.out_of_order == self.unexpected == self.outbox_backlog == 0
            and self.dead_lettered == self.poison_expected
        )


# A PMS command is one effect per sync_id: pms-sync sends it again, same sync_id, until acked.
EFFECT_IDENTITY = {"pms.cancel_booking": "sync_id", "pms.record_no_show": "sync_id"}


def effects_of(records: list[Record]) -> Counter[str]:
    """Distinct effects per counted type: by envelope id (a redelivered envelope counts once),
    or by the business id where the contract resends on purpose."""
    seen: dict[str, set[str]] = defaultdict(set)
    for r in records:
        type_ = r.value.get("type")
        if type_ in COUNTED_TYPES:
            field_ = EFFECT_IDENTITY.get(type_)
            seen[type_].add(r.value.get("data", {}).get(field_, "") if field_ else r.value.get("id", ""))
    return Counter({t: len(ids) for t, ids in seen.items()})


def is_complete(scenario_story: Any, records: list[Record]) -> bool:
    got = effects_of(records)
    return all(got[t] >= n for t, n in scenario_story.expected.items())


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """Where each partition of `topics` ends now: records before it predate the run."""
    consumer = AIOKafkaConsumer(**client_args(bootstrap), enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        return {(tp.topic, tp.partition): o for tp, o in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


def check(
    scenario: Scenario,
    collector: Collector,
    sent_at_ms: dict[str, float],
    poison: list[bytes],
    since: dict[tuple[str, int], int] | None = None,
    consumers: int = 1,
    ignore_dead_letter: Callable[[Record], bool] | None = None,
) -> Verdict:
    """`ignore_dead_letter`: dead letters judged elsewhere (e.g. of the chaos hostile round),
    neither poison nor unexpected here."""
    verdict = Verdict(requests=len(scenario.stories))
    for story in scenario.stories:
        records = collector.by_key.get(story.booking_id, [])
        got = effects_of(records)
        missing = {t: n - got[t] for t, n in story.expected.items() if got[t] < n}
        extra = {t: got[t] - story.expected.get(t, 0) for t in got if got[t] > story.expected.get(t, 0)}
        duplicated = {t: n for t, n in extra.items() if t in story.expected}
        unexpected = {t: n for t, n in extra.items() if t not in story.expected}
        verdict.lost += sum(missing.values())
        verdict.duplicated += sum(duplicated.values())
        verdict.unexpected += sum(unexpected.values())
        if missing or duplicated or unexpected:
            verdict.problems.append(f"{story.booking_id} ({story.kind}): missing {missing} extra {extra}")
        if not missing:
            verdict.complete += 1
        if _out_of_order(story, records):
            verdict.out_of_order += 1
            verdict.problems.append(f"{story.booking_id} ({story.kind}): out of order")
        if not missing and story.request_envelope_id in sent_at_ms:
            last = max(r.timestamp_ms for r in records if r.value.get("type") in story.expected)
            verdict.latencies_ms.append(max(0.0, last - sent_at_ms[story.request_envelope_id]))
    # Every poison message dead-lettered by every service that consumes it, each Kafka record
    # once (a message the generator had to send twice is two records), and nothing else.
    wanted = set(poison)
    by_value: dict[bytes, set[str]] = defaultdict(set)
    positions: Counter[tuple] = Counter()
    for r in collector.records:
        if r.topic.startswith("dlq.") and r.value.get("type") == "message.dead_lettered":
            data = r.value.get("data", {})
            origin = (data.get("original_topic"), data.get("original_partition"))
            if since is not None and origin in since and data.get("original_offset", 0) < since[origin]:
                continue  # a record published before this run (a consumer catching up): not ours to judge
            if ignore_dead_letter is not None and ignore_dead_letter(r):
                continue
            original = original_value(data)
            if original in wanted:
                by_value[original].add(r.topic)
                positions[(r.topic, *origin, data.get("original_offset"))] += 1
            else:
                verdict.problems.append(f"unexpected dead letter on {r.topic}: {data.get('error')}")
                verdict.unexpected += 1
    verdict.dead_lettered = sum(1 for v in wanted if len(by_value[v]) >= consumers)
    verdict.poison_expected = len(wanted)
    twice = sum(n - 1 for n in positions.values() if n > 1)
    if twice:
        verdict.duplicated += twice
        verdict.problems.append(f"{twice} record(s) dead-lettered twice by the same service")
    return verdict


def original_value(dead_letter: dict[str, Any]) -> bytes | None:
    """The original bytes a dead letter keeps (base64, or the text when they were UTF-8)."""
    if dead_letter.get("original_value_base64") is not None:
        return base64.b64decode(dead_letter["original_value_base64"])
    if dead_letter.get("original_value_text") is not None:
        return dead_letter["original_value_text"].encode()
    return None


def _out_of_order(story: Any, records: list[Record]) -> bool:
    """Per booking, booking.events.v1 carries the cancellation before the slot's release, and a
    cancellation after a reschedule carries the rescheduled time."""
    own = sorted((r for r in records if r.topic == BOOKING_EVENTS), key=lambda r: r.offset)
    types = [r.value.get("type") for r in own]
    if (
        "booking.slot_released" in types
        and "booking.cancelled" in types
        and types.index("booking.slot_released") < types.index("booking.cancelled")
    ):
        return True
    if story.kind == "rescheduled_cancel":
        for r in own:
            if r.value.get("type") == "booking.cancelled":
                starts = datetime.fromisoformat(r.value["data"]["starts_at"])
                if starts != story.final_starts_at:
                    return True
    return False


async def outbox_backlog(admin_dsn: str) -> dict[str, int]:
    """Outbox rows waiting to be published, per service schema (0 everywhere once the system has
    drained). A row the relay set aside for good (`parked_at`, where the schema has it) is not
    waiting: it never drains, and the run that caused it judges it."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        backlog = {}
        for schema in SCHEMAS.values():
            parking = await conn.fetchval(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'outbox'"
                " AND column_name = 'parked_at'",
                schema,
            )
            backlog[schema] = await conn.fetchval(
                f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL"
                + (" AND parked_at IS NULL" if parking else "")
            )
        return backlog
    finally:
        await conn.close()


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]

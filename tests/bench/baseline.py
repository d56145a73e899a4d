"""The practical limit of this machine for the system's own topology: the six services as bare
aiokafka + asyncpg loops, one process each, over topics of the same names and partitions (under
a private prefix, so no running service sees them), with the same fan-out and the same consumer
transactions per cancellation; counted in cancellations per second, as the system is.

Each bare service consumes exactly the topics its real one does (every record, whatever its type,
is read and parsed), and for the types its real one handles it claims the envelope id in an inbox
and writes one row of effect in the same transaction as the outbox rows of what it emits;
after the commit it publishes them (idempotent producer, acks=all), waits for the broker, marks
them published and commits the offsets. What the real services emit per story kind is the table
`ROUTES`; billing's capture and notification's sender are a second pair of transactions each (claim
the due rows, then record the outcome and emit), with no card gateway or SMTP server behind them.
Nothing else of the system is there: no validation of the contract, no rules, no audit trail, no
relay process, no metrics. The stories, their expected effects and the completion check are the
system's own (`tests.load.scenario`, `tests.load.checker`).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.kafka import client_args
from shared.topics import (
    BILLING_COMMANDS,
    BILLING_EVENTS,
    BOOKING_EVENTS,
    NOTIFICATION_EVENTS,
    PMS_INTEGRATION_TOPICS,
    PMS_SYNC_ACKS,
    PMS_SYNC_EVENTS,
    POLICY_DECISIONS,
    POLICY_REQUESTS,
    SCORING_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PATIENTS,
    UPSTREAM_PRACTICES,
    UPSTREAM_PROFESSIONALS,
)
from tests.load import scenario as scenarios
from tests.load.checker import Collector, check
from tests.load.driver import wait_complete

PMS_TOPIC = PMS_INTEGRATION_TOPICS["praktika"]

# service -> the topics its real counterpart consumes (its app.py `consumes`)
CONSUMES: dict[str, list[str]] = {
    "booking": [UPSTREAM_BOOKINGS, POLICY_DECISIONS, UPSTREAM_PRACTICES, SCORING_EVENTS],
    "cancellation-policy": [UPSTREAM_PRACTICES, POLICY_REQUESTS],
    "scoring": [BOOKING_EVENTS, UPSTREAM_PROFESSIONALS],
    "billing": [BOOKING_EVENTS, BILLING_COMMANDS, UPSTREAM_PATIENTS],
    "notification": [
        UPSTREAM_BOOKINGS,
        UPSTREAM_PRACTICES,
        BOOKING_EVENTS,
        BILLING_EVENTS,
        SCORING_EVENTS,
        PMS_SYNC_EVENTS,
    ],
    "pms-sync": [UPSTREAM_PRACTICES, UPSTREAM_BOOKINGS, BOOKING_EVENTS, PMS_SYNC_ACKS],
}
TOPICS = sorted({t for ts in CONSUMES.values() for t in ts} | {NOTIFICATION_EVENTS, PMS_TOPIC})

Emit = list[tuple[str, str]]  # (topic, type)
Route = Callable[[dict[str, Any]], Emit]


def _fee(m: dict[str, Any]) -> bool:
    return m["kind"] in ("staff_late", "no_show")


# service -> handled type -> what it emits for that message (by story kind), as the real one
# does in a load run; a type not listed is read and ignored (not claimed), as in the system.
# ("due", type): a row for the service's background side effect, which later emits `type`.
ROUTES: dict[str, dict[str, Route]] = {
    "booking": {
        "booking.cancellation_requested": lambda m: [(POLICY_REQUESTS, "cancellation.assessment_requested")],
        "booking.no_show_reported": lambda m: [(POLICY_REQUESTS, "cancellation.assessment_requested")],
        "booking.rescheduled": lambda m: [],
        "booking.completed": lambda m: [(BOOKING_EVENTS, "booking.completed")],
        "cancellation.assessed": lambda m: (
            [(BOOKING_EVENTS, "booking.no_show_recorded")]
            if m["kind"] == "no_show"
            else [(BOOKING_EVENTS, "booking.cancelled"), (BOOKING_EVENTS, "booking.slot_released")]
        ),
    },
    "cancellation-policy": {
        "cancellation.assessment_requested": lambda m: [(POLICY_DECISIONS, "cancellation.assessed")],
    },
    "scoring": {t: (lambda m: []) for t in ("booking.cancelled", "booking.no_show_recorded", "booking.completed")},
    "billing": {
        t: (lambda m: [(BILLING_EVENTS, "charge.created"), ("due", "payment.captured")] if _fee(m) else [])
        for t in ("booking.cancelled", "booking.no_show_recorded")
    },
    "notification": {
        "booking.rescheduled": lambda m: [],
        "booking.cancellation_requested": lambda m: [],
        "booking.cancelled": lambda m: [("due", "notification.sent")],
        "booking.no_show_recorded": lambda m: [("due", "notification.sent")],
        "charge.created": lambda m: [],
        "payment.captured": lambda m: [],
    },
    "pms-sync": {
        "booking.cancellation_requested": lambda m: [],
        "booking.no_show_reported": lambda m: [],
        "booking.cancelled": lambda m: [(PMS_TOPIC, "pms.cancel_booking")] if m["synced"] else [],
        "booking.no_show_recorded": lambda m: [(PMS_TOPIC, "pms.record_no_show")] if m["synced"] else [],
    },
}
SIDE_EFFECTS = {"billing", "notification"}  # the services with a background side effect
DUE_TOPIC = {"payment.captured": BILLING_EVENTS, "notification.sent": NOTIFICATION_EVENTS}

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS bench;
DROP TABLE IF EXISTS bench.inbox, bench.outbox, bench.state, bench.due;
CREATE TABLE bench.inbox (consumer text, event_id text, processed_at timestamptz DEFAULT now(),
                          PRIMARY KEY (consumer, event_id));
CREATE TABLE bench.outbox (seq bigserial PRIMARY KEY, id uuid UNIQUE, topic text, key text, type text,
                           payload jsonb, created_at timestamptz DEFAULT now(), published_at timestamptz);
CREATE TABLE bench.state (service text, key text, last_type text, updated_at timestamptz DEFAULT now(),
                          PRIMARY KEY (service, key));
CREATE TABLE bench.due (id uuid PRIMARY KEY, service text, key text, type text, message jsonb,
                        claimed_at timestamptz, done_at timestamptz);
CREATE INDEX ON bench.due (service) WHERE claimed_at IS NULL;
"""
PAD = "x" * 700  # about the size of the system's envelopes


def message(type_: str, key: str, cause: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": type_,
        "subject": key,
        "kind": cause["kind"],
        "synced": cause["synced"],
        "data": {"sync_id": f"sync-{key}"},
        "pad": PAD,
    }


class _Bare:
    """One bare service: consume, one transaction per batch, publish, mark, commit offsets."""

    def __init__(self, bootstrap: str, dsn: str, prefix: str, service: str) -> None:
        self.bootstrap, self.dsn, self.prefix, self.service = bootstrap, dsn, prefix, service
        self.routes = ROUTES[service]

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def run(self) -> None:
        self.pool = await asyncpg.create_pool(self.dsn, min_size=2, max_size=4)
        self.producer = AIOKafkaProducer(
            **client_args(self.bootstrap), enable_idempotence=True, acks="all", linger_ms=5
        )
        consumer = AIOKafkaConsumer(
            *(self.topic(t) for t in CONSUMES[self.service]),
            **client_args(self.bootstrap),
            group_id=f"{self.prefix}{self.service}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self.producer.start()
        await consumer.start()
        loops = [asyncio.create_task(self._consume(consumer))]
        if self.service in SIDE_EFFECTS:
            loops.append(asyncio.create_task(self._side_effects()))
        await asyncio.gather(*loops)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=20, max_records=200)
            records = [r for rs in batch.values() for r in rs]
            if not records:
                continue
            handled = []
            for r in records:
                m = json.loads(r.value)
                if m["type"] in self.routes:
                    handled.append(m)
            out: list[dict[str, Any]] = []
            async with self.pool.acquire() as conn, conn.transaction():
                first = {
                    row["event_id"]
                    for row in await conn.fetch(
                        "INSERT INTO bench.inbox (consumer, event_id) SELECT $1, unnest($2::text[])"
                        " ON CONFLICT DO NOTHING RETURNING event_id",
                        self.service,
                        [m["id"] for m in handled],
                    )
                }
                handled = [m for m in handled if m["id"] in first]
                due: list[tuple[Any, ...]] = []
                for m in handled:
                    for topic, type_ in self.routes[m["type"]](m):
                        if topic == "due":
                            due.append((uuid.uuid4(), self.service, m["subject"], type_, json.dumps(m)))
                        else:
                            out.append({"topic": topic, **message(type_, m["subject"], m)})
                last = {m["subject"]: m["type"] for m in handled}  # one row per key and batch
                await conn.execute(
                    "INSERT INTO bench.state (service, key, last_type) SELECT $1, k, t FROM unnest($2::text[], $3::text[])"
                    " AS u(k, t) ON CONFLICT (service, key) DO UPDATE SET last_type = excluded.last_type, updated_at = now()",
                    self.service,
                    list(last),
                    list(last.values()),
                )
                if due:
                    await conn.executemany(
                        "INSERT INTO bench.due (id, service, key, type, message) VALUES ($1, $2, $3, $4, $5::jsonb)",
                        due,
                    )
                await self._outbox(conn, out)
            await self._publish(out)
            await consumer.commit()

    async def _outbox(self, conn: asyncpg.Connection, out: list[dict[str, Any]]) -> None:
        for m in out:
            m["body"] = json.dumps({k: v for k, v in m.items() if k != "topic"}).encode()
        if out:
            await conn.executemany(
                "INSERT INTO bench.outbox (id, topic, key, type, payload) VALUES ($1, $2, $3, $4, $5::jsonb)",
                [(uuid.UUID(m["id"]), m["topic"], m["subject"], m["type"], m["body"].decode()) for m in out],
            )

    async def _publish(self, out: list[dict[str, Any]]) -> None:
        if not out:
            return
        futures = [await self.producer.send(self.topic(m["topic"]), m["body"], key=m["subject"].encode()) for m in out]
        await asyncio.gather(*futures)
        await self.pool.execute(
            "UPDATE bench.outbox SET published_at = now() WHERE id = ANY($1::uuid[])", [uuid.UUID(m["id"]) for m in out]
        )

    async def _side_effects(self) -> None:
        """Billing's capture, notification's sender: claim due rows (skip-locked), then record the
        outcome and emit in a second transaction."""
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    "UPDATE bench.due SET claimed_at = now() WHERE id IN (SELECT id FROM bench.due WHERE service = $1"
                    " AND claimed_at IS NULL LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING id, key, type, message::text",
                    self.service,
                )
            if not rows:
                await asyncio.sleep(0.05)
                continue
            out = [
                {"topic": DUE_TOPIC[r["type"]], **message(r["type"], r["key"], json.loads(r["message"]))} for r in rows
            ]
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE bench.due SET done_at = now() WHERE id = ANY($1::uuid[])", [r["id"] for r in rows]
                )
                await self._outbox(conn, out)
            await self._publish(out)


def _run(bootstrap: str, dsn: str, prefix: str, service: str) -> None:
    asyncio.run(_Bare(bootstrap, dsn, prefix, service).run())


@dataclass
class BaselineResult:
    stories: int
    seconds: float
    throughput_per_s: float
    latencies_ms: list[float]
    lost: int
    duplicated: int


class Baseline:
    """`async with Baseline(...) as b: await b.measure(...)`: six bare processes on private topics."""

    def __init__(self, bootstrap: str, admin_dsn: str, partitions: int = 6) -> None:
        self.bootstrap, self.dsn, self.partitions = bootstrap, admin_dsn, partitions
        self.prefix = f"bench.{uuid.uuid4().hex[:8]}."
        self.procs: dict[str, multiprocessing.process.BaseProcess] = {}

    @property
    def pids(self) -> dict[str, list[int]]:
        return {f"bare {s}": [p.pid] for s, p in self.procs.items() if p.pid}

    async def __aenter__(self) -> Baseline:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(SCHEMA_SQL)
        finally:
            await conn.close()
        admin = AIOKafkaAdminClient(**client_args(self.bootstrap))
        await admin.start()
        try:
            await admin.create_topics([NewTopic(self.prefix + t, self.partitions, 1) for t in TOPICS])
        finally:
            await admin.close()
        ctx = multiprocessing.get_context("spawn")
        for service in CONSUMES:
            p = ctx.Process(target=_run, args=(self.bootstrap, self.dsn, self.prefix, service), daemon=True)
            p.start()
            self.procs[service] = p
        return self

    async def __aexit__(self, *exc: object) -> None:
        for p in self.procs.values():
            p.terminate()
            p.join(10)
        admin = AIOKafkaAdminClient(**client_args(self.bootstrap))
        await admin.start()
        try:
            await admin.delete_topics([self.prefix + t for t in TOPICS])
        except Exception:  # a topic left behind is only clutter
            pass
        finally:
            await admin.close()

    async def measure(self, count: int, rate: float | None, seed: int, progress=None) -> BaselineResult:
        """`count` stories of the load scenario's mix (its requests only, as the system's burst),
        sent at `rate` stories/s or as fast as possible; waits until every story has its effects."""
        scenario = scenarios.build(count, seed=seed)
        outputs = [BOOKING_EVENTS, POLICY_DECISIONS, BILLING_EVENTS, NOTIFICATION_EVENTS, PMS_TOPIC]
        collector = Collector(self.bootstrap, [self.prefix + t for t in outputs])
        await collector.start()
        producer = AIOKafkaProducer(**client_args(self.bootstrap), acks="all", linger_ms=2)
        await producer.start()
        sent: dict[str, float] = {}
        try:
            started = time.monotonic()
            futures = []
            for i, story in enumerate(scenario.stories):
                if rate:
                    delay = started + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                cause = {"kind": story.kind, "synced": story.practice.integration == "praktika"}
                for _, key, env in story.messages[1:]:
                    m = message(env["type"], key, cause) | {"id": env["id"]}
                    sent[env["id"]] = time.time() * 1000
                    futures.append(
                        await producer.send(self.prefix + UPSTREAM_BOOKINGS, json.dumps(m).encode(), key=key.encode())
                    )
                if len(futures) >= 200 or rate:
                    await asyncio.gather(*futures)
                    futures = []
            await asyncio.gather(*futures)
            await wait_complete(scenario, collector, timeout=300, label="baseline: effects")
            elapsed = time.monotonic() - started
            await asyncio.sleep(1)
            verdict = check(scenario, collector, sent, poison=[])
        finally:
            await producer.stop()
            await collector.stop()
        if progress:
            progress.update(count)
        return BaselineResult(count, elapsed, count / elapsed, verdict.latencies_ms, verdict.lost, verdict.duplicated)

"""The practical limit of this machine for the same number of hops: a bare aiokafka + asyncpg
loop per hop (consume a batch, one transaction with an inbox and an outbox insert, produce,
commit the offsets), each hop its own process, chained through Kafka topics."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
import uuid
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.kafka import client_args

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS bench;
CREATE TABLE IF NOT EXISTS bench.inbox (consumer text, event_id text, processed_at timestamptz DEFAULT now(),
                                        PRIMARY KEY (consumer, event_id));
CREATE TABLE IF NOT EXISTS bench.outbox (seq bigserial PRIMARY KEY, id uuid UNIQUE, topic text, key text,
                                         payload jsonb, created_at timestamptz DEFAULT now(), published_at timestamptz);
"""


async def _hop(bootstrap: str, dsn: str, name: str, source: str, target: str) -> None:
    consumer = AIOKafkaConsumer(
        source, **client_args(bootstrap), group_id=name, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    producer = AIOKafkaProducer(**client_args(bootstrap), enable_idempotence=True, acks="all", linger_ms=5)
    conn = await asyncpg.connect(dsn)
    await consumer.start()
    await producer.start()
    try:
        while True:
            records = [r for batch in (await consumer.getmany(timeout_ms=50, max_records=200)).values() for r in batch]
            if not records:
                continue
            out = [(uuid.uuid4(), target, r.key.decode(), r.value.decode()) for r in records]
            async with conn.transaction():
                await conn.executemany(
                    "INSERT INTO bench.inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    [(name, json.loads(r.value)["id"]) for r in records],
                )
                await conn.executemany(
                    "INSERT INTO bench.outbox (id, topic, key, payload) VALUES ($1, $2, $3, $4::jsonb)", out
                )
            futures = [await producer.send(target, r.value, key=r.key) for r in records]
            await asyncio.gather(*futures)
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
        await conn.close()


def _run_hop(*args: str) -> None:
    asyncio.run(_hop(*args))


@dataclass
class BaselineResult:
    hops: int
    throughput_per_s: float
    latencies_ms: list[float]


class Baseline:
    def __init__(self, bootstrap: str, admin_dsn: str, hops: int = 4, partitions: int = 6) -> None:
        self.bootstrap, self.dsn, self.hops, self.partitions = bootstrap, admin_dsn, hops, partitions
        self.run = uuid.uuid4().hex[:8]
        self.topics = [f"bench.{self.run}.hop{i}" for i in range(hops + 1)]
        self.procs: list[multiprocessing.Process] = []

    async def __aenter__(self) -> Baseline:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(SCHEMA_SQL)
        finally:
            await conn.close()
        admin = AIOKafkaAdminClient(**client_args(self.bootstrap))
        await admin.start()
        try:
            await admin.create_topics([NewTopic(t, self.partitions, 1) for t in self.topics])
        finally:
            await admin.close()
        ctx = multiprocessing.get_context("spawn")
        for i in range(self.hops):
            p = ctx.Process(
                target=_run_hop,
                args=(self.bootstrap, self.dsn, f"bench-{self.run}-hop{i}", self.topics[i], self.topics[i + 1]),
                daemon=True,
            )
            p.start()
            self.procs.append(p)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
            p.join(10)
        admin = AIOKafkaAdminClient(**client_args(self.bootstrap))
        await admin.start()
        try:
            await admin.delete_topics(self.topics)
        except Exception:
            pass
        finally:
            await admin.close()

    async def measure(self, count: int, rate: float | None, progress=None) -> BaselineResult:
        """Send `count` messages into the first hop (at `rate`/s or as fast as possible) and
        wait for all of them at the end of the chain."""
        sink = AIOKafkaConsumer(
            self.topics[-1],
            **client_args(self.bootstrap),
            group_id=f"bench-{self.run}-sink-{uuid.uuid4().hex[:4]}",
            auto_offset_reset="latest",
            enable_auto_commit=False,
        )
        await sink.start()
        while not sink.assignment():
            await asyncio.sleep(0.05)
        for tp in sink.assignment():
            await sink.position(tp)
        producer = AIOKafkaProducer(**client_args(self.bootstrap), enable_idempotence=True, linger_ms=2)
        await producer.start()
        marker = uuid.uuid4().hex[:6]
        sent: dict[str, float] = {}
        latencies: list[float] = []

        async def drain() -> None:
            while len(latencies) < count:
                for batch in (await sink.getmany(timeout_ms=100)).values():
                    for r in batch:
                        body = json.loads(r.value)
                        if body.get("marker") == marker and body["id"] in sent:
                            latencies.append(r.timestamp - sent[body["id"]])
                            if progress:
                                progress.update(len(latencies))

        drainer = asyncio.create_task(drain())
        started = time.monotonic()
        futures = []
        for i in range(count):
            if rate:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            mid = f"{marker}-{i}"
            sent[mid] = time.time() * 1000
            futures.append(
                await producer.send(
                    self.topics[0],
                    json.dumps({"id": mid, "marker": marker, "pad": "x" * 600}).encode(),
                    key=f"k{i % 997}".encode(),
                )
            )
            if len(futures) >= 200 or rate:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
        try:
            await asyncio.wait_for(drainer, timeout=300)
        finally:
            elapsed = time.monotonic() - started
            await producer.stop()
            await sink.stop()
        return BaselineResult(self.hops, count / elapsed, latencies)

"""The tools' way to the broker: publish one event or the original bytes, read topics without a group.

Guarantees:
- Every client is built from `shared.kafka` (`KafkaConnection.from_env`): whatever KAFKA_*
  settings the environment gives (PLAINTEXT, SASL_SSL with a principal's credentials, ...).
  `client_env(principal)` reads `.local/clients/<principal>.env` on top of the environment, so
  a tool can speak as the principal the broker lets write a topic.
- Publishing is idempotent with `acks=all` and waits for the broker's acknowledgement: when a
  tool says "sent", the broker has it.
- Reading never joins a consumer group (partitions are assigned by hand), so a tool commits no
  offset and takes nothing away from a service.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import access
from ..contracts.base import Payload
from ..contracts.envelope import new_envelope
from ..kafka import KafkaConnection


def client_env(principal: str | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a client of `principal` connects with: `.local/clients/<principal>.env`
    (shared.access) over the process's own; the process's own alone when no principal is named."""
    env = dict(os.environ if environ is None else environ)
    if principal:
        path = access.client_file(principal)
        if not path.is_file():
            raise FileNotFoundError(f"no client settings for {principal!r} at {path}")
        env.update(access.client_env(principal))
    return env


def connection(principal: str | None = None) -> KafkaConnection:
    return KafkaConnection.from_env(environ=client_env(principal))


OBSERVER = "observer"


def connection_as(principal: str | None, explicit: str | None = None) -> KafkaConnection:
    """The connection for a job `principal` may do: the explicitly named client wins; else the
    environment's own credentials when it has some; else the principal's client file when the
    system wrote one; else the environment as it is (an open development broker)."""
    if explicit:
        return connection(explicit)
    if os.environ.get("KAFKA_SASL_USERNAME") or not principal or not access.client_file(principal).is_file():
        return connection(None)
    return connection(principal)


def writer_of(topic: str, explicit: str | None = None) -> KafkaConnection:
    return connection_as(access.writer_of(topic), explicit)


class Bus:
    """A started idempotent producer; use `async with open_bus(...) as bus`."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    async def raw(self, topic: str, key: bytes | None, value: bytes | None) -> tuple[int, int]:
        """Send bytes as they are; returns (partition, offset) once the broker has them."""
        meta = await self._producer.send_and_wait(topic, value=value, key=key)
        return meta.partition, meta.offset

    async def event(
        self,
        topic: str,
        payload: Payload,
        *,
        subject: str,
        source: str,
        correlation_id: str | None = None,
        time: datetime | None = None,
    ) -> dict[str, Any]:
        """Publish one contract event keyed by its subject; returns the envelope sent."""
        envelope = new_envelope(payload, source=source, subject=subject, correlation_id=correlation_id, time=time)
        await self.raw(topic, subject.encode(), json.dumps(envelope).encode())
        return envelope


@asynccontextmanager
async def open_bus(conn: KafkaConnection) -> AsyncIterator[Bus]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**conn.aiokafka_args(), enable_idempotence=True, acks="all")
    await producer.start()
    try:
        yield Bus(producer)
    finally:
        await producer.stop()


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


@asynccontextmanager
async def open_reader(
    conn: KafkaConnection, topics: Iterable[str], *, from_beginning: bool = False
) -> AsyncIterator[Reader]:
    """A consumer without a group over every partition of `topics`, at their end (or beginning)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**conn.aiokafka_args(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = []
        for topic in topics:
            for p in sorted(consumer.partitions_for_topic(topic) or await _partitions(consumer, topic)):
                partitions.append(TopicPartition(topic, p))
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
            for tp in partitions:  # fix the position now: what is published from here on is seen
                await consumer.position(tp)
        yield Reader(consumer, partitions)
    finally:
        await consumer.stop()


async def _partitions(consumer: Any, topic: str) -> set[int]:
    # The metadata of a topic this client has not asked about yet.
    await consumer._client.force_metadata_update()
    found: set[int] = consumer.partitions_for_topic(topic) or set()
    return found


class Reader:
    def __init__(self, consumer: Any, partitions: list[Any]) -> None:
        self._consumer = consumer
        self.partitions = partitions

    async def batch(self, timeout_ms: int = 500) -> list[Record]:
        got = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=500)
        return [
            Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
            for records in got.values()
            for m in records
        ]

    async def end_offsets(self) -> dict[tuple[str, int], int]:
        ends = await self._consumer.end_offsets(self.partitions)
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    async def drain(self, timeout_ms: int = 500) -> list[Record]:
        """Everything up to the end offsets as they are now (for topics read from the beginning)."""
        ends = {k: v for k, v in (await self.end_offsets()).items() if v > 0}
        records: list[Record] = []
        seen: dict[tuple[str, int], int] = {}
        for _ in range(10_000):
            if all(seen.get(k, -1) >= end - 1 for k, end in ends.items()):
                break
            batch = await self.batch(timeout_ms)
            if not batch and await self._at_end(ends):
                break
            for r in batch:
                seen[(r.topic, r.partition)] = max(seen.get((r.topic, r.partition), -1), r.offset)
                records.append(r)
        return records

    async def _at_end(self, ends: dict[tuple[str, int], int]) -> bool:
        for tp in self.partitions:
            if await self._consumer.position(tp) < ends.get((tp.topic, tp.partition), 0):
                return False
        return True

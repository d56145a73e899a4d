"""The transactional outbox and its relay.

Guarantees:
- An event is written to `outbox` in the same transaction as the change that caused it, so it
  is published if and only if that change committed (only the relay talks to Kafka).
- The relay publishes committed rows in `seq` order with the Kafka key = the aggregate id
  (CloudEvents `subject`), waits for the broker's acknowledgement (idempotent producer,
  acks=all), then marks them published. A crash between the two republishes them; consumers
  de-duplicate on the envelope id, which is the outbox row id.
- One relay per service holds the lead (a session advisory lock on its own connection), so
  per-key order holds with any number of replicas. Rows are read by "unpublished, by seq",
  never by "greater than the last seq seen", because sequences commit out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .contracts.base import Payload
from .contracts.envelope import new_envelope
from .logging import get_logger
from .metrics import OUTBOX_PUBLISHED, OUTBOX_UNPUBLISHED

log = get_logger(__name__)


@dataclass(frozen=True)
class OutgoingEvent:
    """One event to publish: its topic, its key (the aggregate id) and its full envelope."""

    topic: str
    key: str
    envelope: dict[str, Any]

    @property
    def id(self) -> str:
        return self.envelope["id"]


def outgoing(
    topic: str,
    payload: Payload,
    *,
    subject: str,
    source: str,
    correlation_id: str | None,
    time: datetime | None = None,
    event_id: str | None = None,
) -> OutgoingEvent:
    envelope = new_envelope(
        payload,
        source=source,
        subject=subject,
        correlation_id=correlation_id,
        time=time,
        event_id=event_id,
    )
    return OutgoingEvent(topic=topic, key=subject, envelope=envelope)


async def write(conn: asyncpg.Connection, events: Iterable[OutgoingEvent]) -> int:
    """Insert events into the outbox inside the caller's transaction."""
    rows = [
        (uuid.UUID(e.id), e.topic, e.key, e.envelope["type"], json.dumps(e.envelope))
        for e in events
    ]
    if rows:
        await conn.executemany(
            "INSERT INTO outbox (id, topic, key, type, payload) VALUES ($1, $2, $3, $4, $5::jsonb)",
            rows,
        )
    return len(rows)


# publish(topic, key, value, headers) -> a future that resolves when the broker acknowledged.
Publish = Callable[[str, bytes, bytes, dict[str, str]], Awaitable["asyncio.Future[Any]"]]


class OutboxRelay:
    """Publishes committed outbox rows in order; one leader per service."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        publish: Publish,
        *,
        service: str,
        batch_size: int = 500,
        poll_interval: float = 0.2,
        retention_hours: int = 24 * 7,
        on_publish_failure: Callable[[Exception], Awaitable[None]] | None = None,
    ) -> None:
        self._pool = pool
        self._on_publish_failure = on_publish_failure
        self._publish = publish
        self._service = service
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._retention_hours = retention_hours
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.is_leader = False

    def wake(self) -> None:
        """Something was committed to the outbox in this process: publish without waiting."""
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self._service}")

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Publish what is committed (for up to `drain_seconds`), then stop."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=drain_seconds)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                async with self._pool.acquire() as conn:
                    lock_key = await conn.fetchval("SELECT hashtext($1)", f"{self._service}.outbox-relay")
                    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key):
                        self.is_leader = False
                        await self._sleep(1.0)
                        continue
                    self.is_leader = True
                    log.info("outbox relay leads", service=self._service)
                    try:
                        await self._lead(conn)
                    finally:
                        self.is_leader = False
                        # A broken connection has lost the lock with its session already.
                        with contextlib.suppress(Exception):
                            await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database or broker down: back off, never skip a row
                failures += 1
                delay = min(10.0, 0.2 * 2**failures) * (0.5 + random.random() / 2)
                log.warning("outbox relay retrying", error=type(exc).__name__, detail=str(exc)[:200], delay=round(delay, 2))
                if self._on_publish_failure is not None:
                    try:
                        await self._on_publish_failure(exc)
                    except Exception as reset_exc:  # noqa: BLE001 - the next round tries again
                        log.warning("relay producer reset failed", error=type(reset_exc).__name__)
                await self._sleep(delay)

    async def _lead(self, conn: asyncpg.Connection) -> None:
        cleaned_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            published = await self.publish_once(conn)
            if published:
                continue
            if self._stopping:
                return
            if loop.time() - cleaned_at > 300:
                await conn.execute(
                    "DELETE FROM outbox WHERE published_at < now() - make_interval(hours => $1)",
                    self._retention_hours,
                )
                cleaned_at = loop.time()
            await self._sleep(self._poll_interval)

    async def publish_once(self, conn: asyncpg.Connection) -> int:
        """Publish one batch of unpublished rows in seq order; returns how many."""
        rows = await conn.fetch(
            "SELECT seq, topic, key, payload::text AS payload FROM outbox"
            " WHERE published_at IS NULL ORDER BY seq LIMIT $1",
            self._batch_size,
        )
        if not rows:
            OUTBOX_UNPUBLISHED.labels(self._service).set(0)
            return 0
        futures = [
            await self._publish(
                row["topic"],
                (row["key"] or "").encode(),
                row["payload"].encode(),
                {"content-type": "application/cloudevents+json"},
            )
            for row in rows
        ]
        # Every row of the batch is acknowledged before any is marked: a failure republishes
        # the whole batch, which consumers de-duplicate.
        await asyncio.gather(*futures)
        await conn.execute(
            "UPDATE outbox SET published_at = now() WHERE seq = ANY($1::bigint[])",
            [row["seq"] for row in rows],
        )
        OUTBOX_PUBLISHED.labels(self._service).inc(len(rows))
        return len(rows)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass
        self._wakeup.clear()

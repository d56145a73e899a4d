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
- Nothing written here can be too large for the broker: an event over `MAX_EVENT_BYTES` is
  refused when it is built (`EventTooLarge`, a permanent error: the message that caused it is
  dead-lettered). A row the broker still refuses for good (too large, invalid topic) is parked
  (`parked_at`, `park_reason`, the `cancellations_outbox_parked_total` metric and an error log
  line) and the rows behind it flow; a parked row is never published by itself again.
- Each published event is counted by type (`cancellations_events_published_total` and the
  business counters of shared.metrics) once the broker acknowledged it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.errors import KafkaError

from . import tracing
from .backoff import backoff_delay
from .contracts.base import Payload
from .contracts.envelope import fast_json, new_envelope
from .db import Connection
from .logging import get_logger
from .metrics import BUSINESS_EVENT_WHEN, BUSINESS_EVENTS, EVENTS_PUBLISHED, OUTBOX_PARKED, OUTBOX_PUBLISHED
from .redaction import mask_text

log = get_logger(__name__)

# Kafka refuses a record over about 1 MB (the broker's message.max.bytes and the producer's
# max.request.size): key and value together stay well below it.
MAX_EVENT_BYTES = 900_000
MAX_KEY_CHARS = 1024
BATCH_MAX_BYTES = 16 * 1024 * 1024  # one relay batch, about

# The broker's answers that no retry changes.
PERMANENT_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.CorruptRecordException,
)


class EventTooLarge(ValueError):
    """An event the broker could never take: the message that caused it is dead-lettered."""


@dataclass(frozen=True)
class OutgoingEvent:
    """One event to publish: its topic, its key (the aggregate id), its envelope and its JSON."""

    topic: str
    key: str
    envelope: dict[str, Any]
    body: str
    # W3C trace context of the span that emitted it, kept beside the body (`outbox.traceparent`):
    # the relay adds its own publish span's to the record it sends.
    traceparent: str | None = None
    tracestate: str | None = None

    @property
    def id(self) -> str:
        return str(self.envelope["id"])


def outgoing(
    topic: str,
    payload: Payload,
    *,
    subject: str,
    source: str,
    correlation_id: str | None,
    time: datetime | None = None,
    event_id: str | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> OutgoingEvent:
    envelope = new_envelope(
        payload,
        source=source,
        subject=subject,
        correlation_id=correlation_id,
        time=time,
        event_id=event_id,
    )
    body = orjson.dumps(envelope).decode() if fast_json() else json.dumps(envelope)
    if len(subject) > MAX_KEY_CHARS or len(body.encode()) + len(subject.encode()) > MAX_EVENT_BYTES:
        raise EventTooLarge(
            f"{envelope['type']} for {subject[:100]!r} would be {len(body)} bytes with a key of {len(subject)}"
            f" characters: at most {MAX_EVENT_BYTES} bytes and a key of {MAX_KEY_CHARS} characters fit the broker"
        )
    return OutgoingEvent(
        topic=topic,
        key=subject,
        envelope=envelope,
        body=body,
        traceparent=traceparent,
        tracestate=tracestate if traceparent else None,
    )


async def write(conn: Connection, events: Iterable[OutgoingEvent]) -> int:
    """Insert events into the outbox inside the caller's transaction: one statement however many
    (an executemany would execute once per row), the rows numbered (`seq`) in the given order,
    which is the order the relay publishes them in."""
    rows = [(uuid.UUID(e.id), e.topic, e.key, e.envelope["type"], e.body, e.traceparent, e.tracestate) for e in events]
    if rows:
        await conn.execute(
            "INSERT INTO outbox (id, topic, key, type, payload, traceparent, tracestate)"
            " SELECT id, topic, key, type, payload::jsonb, traceparent, tracestate"
            " FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])"
            " WITH ORDINALITY AS r(id, topic, key, type, payload, traceparent, tracestate, n) ORDER BY n",
            *(list(column) for column in zip(*rows, strict=True)),
        )
    return len(rows)


def with_trace_context(body: str, traceparent: str | None, tracestate: str | None) -> str:
    """The envelope `body` (a JSON object, as Postgres gives jsonb back) with the CloudEvents
    distributed-tracing attributes first. The body itself never holds them: the outbox keeps
    them in their own columns, and only the relay knows the publish span's context."""
    if not traceparent or not body.startswith("{"):
        return body
    # A traceparent is hex and dashes (validated when emitted); a tracestate may hold quotes.
    state = f'"tracestate": {json.dumps(tracestate)}, ' if tracestate else ""
    return f'{{"traceparent": "{traceparent}", {state}{body[1:]}'


@dataclass(frozen=True)
class Backlog:
    """What waits in one service's outbox: rows to publish, the oldest one's age, parked rows."""

    unpublished: int
    oldest_unpublished_seconds: float
    parked: int


async def backlog(conn: Connection) -> Backlog:
    """The outbox's backlog, read through its two partial indexes (cheap at any table size)."""
    row = await conn.fetchrow(
        "SELECT"
        " (SELECT count(*) FROM outbox WHERE published_at IS NULL AND parked_at IS NULL) AS unpublished,"
        " (SELECT extract(epoch FROM now() - created_at) FROM outbox"
        "  WHERE published_at IS NULL AND parked_at IS NULL ORDER BY seq LIMIT 1) AS oldest,"
        " (SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL) AS parked"
    )
    assert row is not None
    return Backlog(
        unpublished=int(row["unpublished"]),
        oldest_unpublished_seconds=max(0.0, float(row["oldest"] or 0)),
        parked=int(row["parked"]),
    )


def count_published(service: str, events: Iterable[tuple[str, str]]) -> None:
    """Count events the broker acknowledged, each given as (type, envelope JSON): by type, and
    the business facts they state. Only an event whose fact depends on its data
    (`BUSINESS_EVENT_WHEN`: a fee is raised when final) has its JSON parsed."""
    for event_type, body in events:
        EVENTS_PUBLISHED.labels(service, event_type).inc()
        business = BUSINESS_EVENTS.get(event_type)
        if business is None:
            continue
        when = BUSINESS_EVENT_WHEN.get(event_type)
        if when is None or when(orjson.loads(body).get("data") or {}):
            business.labels(service).inc()


# A started Kafka producer for the relay: idempotent, acks=all (see shared.service).
ProducerFactory = Callable[[], Awaitable[AIOKafkaProducer]]


class OutboxRelay:
    """Publishes committed outbox rows in order; one leader per service.

    The relay owns its producer: it starts one with `start()`, replaces it after a Kafka error
    (an idempotent producer can lose its sequence over a broker restart and stay
    OutOfOrderSequence for ever; the rows not marked are published again and consumers
    de-duplicate them), and stops it with `stop()`.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        new_producer: ProducerFactory,
        *,
        service: str,
        batch_size: int = 500,
        poll_interval: float = 0.2,
        retention_hours: int = 24 * 7,
    ) -> None:
        self._pool = pool
        self._new_producer = new_producer
        self._producer: AIOKafkaProducer | None = None  # between start() and stop()
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

    async def start(self) -> None:
        self._producer = await self._new_producer()
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self._service}")

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Publish what is committed (for up to `drain_seconds`), then stop."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=drain_seconds)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _publish(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[Any]:
        """Hand one record to the producer; the future resolves when the broker acknowledged it."""
        assert self._producer is not None, "publishing before start()"
        future: asyncio.Future[Any] = await self._producer.send(
            topic, value=value, key=key or None, headers=[("content-type", b"application/cloudevents+json")]
        )
        return future

    async def _replace_producer(self) -> None:
        old, self._producer = self._producer, await self._new_producer()
        if old is not None:
            await old.stop()

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
            except Exception as exc:  # noqa: BLE001 - database or broker down: back off, never skip a row
                failures += 1
                delay = backoff_delay(failures, base=0.4, cap=10.0)
                log.warning(
                    "outbox relay retrying",
                    error=type(exc).__name__,
                    detail=mask_text(str(exc))[:200],
                    delay=round(delay, 2),
                )
                if isinstance(exc, KafkaError):
                    try:
                        await self._replace_producer()
                    except Exception as reset_exc:  # noqa: BLE001 - the next round tries again
                        log.warning("relay producer reset failed", error=type(reset_exc).__name__)
                await self._sleep(delay)

    async def _lead(self, conn: Connection) -> None:
        cleaned_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            published = await self.publish_once(conn)
            if published:
                continue
            if self._stopping:
                return
            if loop.time() - cleaned_at > 300:
                cleaned_at = loop.time()  # once per period, even when it fails
                await self._clean(conn)
            await self._sleep(self._poll_interval)

    async def _clean(self, conn: Connection, batch: int = 10_000) -> None:
        """Delete published rows past retention, a batch at a time (each well within statement_timeout)."""
        while True:
            deleted = await conn.fetchval(
                "WITH gone AS (DELETE FROM outbox WHERE seq = ANY(ARRAY("
                " SELECT seq FROM outbox WHERE published_at < now() - make_interval(hours => $1) LIMIT $2"
                ")) RETURNING 1) SELECT count(*) FROM gone",
                self._retention_hours,
                batch,
            )
            if deleted < batch or self._stopping:
                return

    async def publish_once(self, conn: Connection) -> int:
        """Publish one batch of unpublished rows in seq order; returns how many."""
        # At most `batch_size` rows and about BATCH_MAX_BYTES of them (always at least one row):
        # a run of large dead letters must not pull hundreds of megabytes into one batch.
        rows = await conn.fetch(
            "SELECT seq, id, topic, key, type, payload, traceparent, tracestate FROM ("
            " SELECT seq, id, topic, key, type, payload, traceparent, tracestate,"
            "  sum(octet_length(payload)) OVER (ORDER BY seq) - octet_length(payload) AS before"
            " FROM (SELECT seq, id, topic, key, type, payload::text AS payload, traceparent, tracestate FROM outbox"
            "  WHERE published_at IS NULL AND parked_at IS NULL ORDER BY seq LIMIT $1) AS due"
            ") AS sized WHERE before < $2 ORDER BY seq",
            self._batch_size,
            BATCH_MAX_BYTES,
        )
        if not rows:
            return 0
        sent: list[tuple[asyncpg.Record, asyncio.Future[Any]]] = []
        refused: list[tuple[asyncpg.Record, BaseException]] = []
        spans: list[Any] = []  # the publish spans of `sent` (shared.tracing; None when off)
        for row in rows:
            span, traceparent, tracestate = tracing.publish(self._service, row)
            body = with_trace_context(row["payload"], traceparent, tracestate)
            try:
                future = await self._publish(row["topic"], (row["key"] or "").encode(), body.encode())
            except PERMANENT_PUBLISH_ERRORS as exc:  # refused before it left (e.g. over the size limit)
                refused.append((row, exc))
                tracing.published(span, exc)
            else:
                sent.append((row, future))
                spans.append(span)
        outcomes = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        for span, outcome in zip(spans, outcomes, strict=True):
            tracing.published(span, outcome)
        transient: BaseException | None = None
        for (row, _), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, PERMANENT_PUBLISH_ERRORS):
                refused.append((row, outcome))
            elif isinstance(outcome, BaseException) and transient is None:
                transient = outcome
        if refused:
            await self._park(conn, refused)
        if transient is not None:
            # Nothing of this batch is marked published: it goes again whole (consumers
            # de-duplicate), so a key's events never overtake one another.
            raise transient
        await conn.execute(
            "UPDATE outbox SET published_at = now() WHERE seq = ANY($1::bigint[])",
            [row["seq"] for row, _ in sent],
        )
        OUTBOX_PUBLISHED.labels(self._service).inc(len(sent))
        count_published(self._service, [(row["type"], row["payload"]) for row, _ in sent])
        return len(rows)

    async def _park(self, conn: Connection, refused: list[tuple[asyncpg.Record, BaseException]]) -> None:
        """Set aside rows the broker refuses for good, with the reason, so the rows behind them flow."""
        await conn.executemany(
            "UPDATE outbox SET parked_at = now(), park_reason = $2 WHERE seq = $1",
            [(row["seq"], f"{type(exc).__name__}: {exc}"[:1000]) for row, exc in refused],
        )
        OUTBOX_PARKED.labels(self._service).inc(len(refused))
        for row, exc in refused:
            log.error(
                "outbox row parked: the broker refuses it for good",
                seq=row["seq"],
                topic=row["topic"],
                event_type=row["type"],
                size=len(row["payload"]),
                error=type(exc).__name__,
            )

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout=seconds)
        except TimeoutError:
            pass
        self._wakeup.clear()

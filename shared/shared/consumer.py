"""How a service handles a message — the recipe of docs/design.md, written once for all six.

Guarantees:
1. Every record is parsed (envelope and payload, pydantic; CloudEvents structured or binary
   mode, `parse_record`); one that is unparseable, of an
   unknown type or against the contract goes to `dlq.<service>.v1` with its original bytes,
   topic, partition, offset and the error — through the outbox, in the same transaction as
   everything else, so it is recorded once and never lost.
2. A batch of records is handled in ONE Postgres transaction: the inbox claim of every envelope
   id (a second delivery does nothing), each handler's change, and the outbox rows of the events
   they emit, in record order per key. The batch runs at once (one claim and one outbox write for
   all; a `SetBased` handler gets every record of its type in a wave at once, a wave holding at
   most one record per Kafka key, so per-key order holds); when a handler fails for good, the
   transaction is rolled back and the batch runs again with a savepoint per record (a set-based
   handler is then given a set of one), so only that record is dead-lettered.
3. The Kafka offsets are committed only after that transaction committed: a crash anywhere
   before means redelivery, which (2) makes harmless.
4. A transient fault (database or broker down, serialization failure) rolls the batch back and
   retries it with backoff, never committing past it; only a record that can never succeed
   (contract violation, or a handler error that is not transient) is dead-lettered. Nothing
   else leaves `handle` while the service runs: a batch is committed or retried, never skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import asyncpg
import structlog
from aiokafka.errors import KafkaError

from . import inbox, outbox, tracing
from .backoff import backoff_delay
from .contracts.base import Payload
from .contracts.deadletter import MessageDeadLettered
from .contracts.envelope import ContractViolation, Event, Headers, parse_record
from .contracts.registry import models_for
from .db import Connection
from .logging import get_logger
from .metrics import BATCH_SECONDS, DEAD_LETTERS, MESSAGES, TRANSIENT_RETRIES
from .redaction import mask_text
from .topics import dead_letter_topic

log = get_logger(__name__)

Deps = TypeVar("Deps")


class Record(Protocol):
    """What we need of a consumed Kafka record (aiokafka's ConsumerRecord has it)."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # milliseconds since the epoch: the producer's CreateTime, kept on a replay
    key: bytes | None
    value: bytes | None
    headers: Headers  # CloudEvents binary mode carries the envelope's attributes here


def record_time(record: Record) -> datetime | None:
    """When the broker says the record was produced; None when it carries no usable time."""
    try:
        return datetime.fromtimestamp(record.timestamp / 1000, UTC) if record.timestamp > 0 else None
    except (AttributeError, TypeError, ValueError, OverflowError, OSError):
        return None


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    KafkaError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout (DATABASE_STATEMENT_TIMEOUT_MS)
    asyncpg.exceptions.InsufficientResourcesError,
)


def is_transient(exc: BaseException) -> bool:
    """A fault that may go away by itself: retry, never dead-letter."""
    # On a connection the server has just terminated, asyncpg may raise its bare
    # InternalClientError ("cannot switch to state …; another operation (2) is in progress")
    # instead of a connection error: that is a broken connection too, not a bad record.
    return isinstance(exc, TRANSIENT_ERRORS) or type(exc) is asyncpg.exceptions.InternalClientError


@dataclass
class UnitOfWork(Generic[Deps]):
    """One transaction's worth of work: its connection, the service's dependencies, and the
    events to publish if, and only if, the transaction commits. Handlers get a `Unit` (one with
    the message it handles); background work gets a plain `UnitOfWork`."""

    conn: Connection
    service: str
    deps: Deps
    correlation_id: str | None = None
    emitted: list[outbox.OutgoingEvent] = field(default_factory=list)
    # W3C trace context the emitted events carry (shared.tracing): the span handling the unit's work.
    traceparent: str | None = None
    tracestate: str | None = None

    def emit(self, topic: str, payload: Payload, *, subject: str, time: datetime | None = None) -> str:
        """Publish `payload` on `topic` if, and only if, this unit's transaction commits."""
        event = outbox.outgoing(
            topic,
            payload,
            subject=subject,
            source=f"service/{self.service}",
            correlation_id=self.correlation_id,
            time=time,
            traceparent=self.traceparent,
            tracestate=self.tracestate,
        )
        self.emitted.append(event)
        return event.id


@dataclass
class Unit(UnitOfWork[Deps]):
    """A handler's unit of work: the message it handles, and that record's broker timestamp."""

    event: Event = field(kw_only=True)
    # The Kafka record's own timestamp: what a request's claimed time is checked against.
    record_time: datetime | None = field(default=None, kw_only=True)


Handler = Callable[[Unit[Any], Any], Awaitable[None]]


@dataclass(frozen=True)
class SetBased:
    """A handler that takes many records of its type at once: `handle_many(units, payloads)`, one
    unit per record (its own correlation id and `emit`), every record for a different Kafka key,
    in the order of their records. It loads what the whole set needs in one statement and writes
    with one, so a batch costs a fixed number of statements rather than a few per record. Called
    with one record it is the per-record handler (the savepoint path, and
    CONSUMER_SET_BASED=false): there is one handling path, not two."""

    handle_many: Callable[[Sequence[Unit[Any]], Sequence[Any]], Awaitable[None]]

    async def __call__(self, unit: Unit[Any], payload: Any) -> None:
        await self.handle_many([unit], [payload])

    @property
    def __name__(self) -> str:
        return getattr(self.handle_many, "__name__", "set_based")


# Outcomes of a record that wrote something (and may have emitted events); an ignored type or a
# duplicate wrote nothing, and its batch's commit wakes no one.
_WROTE = frozenset({"processed", "dead_lettered"})


class _RecordFailed(Exception):
    """A handler failed for good in an optimistic batch: redo the batch record by record."""


# For a request whose payload breaks the contract: (data, error, envelope subject) ->
# [(topic, payload, subject)] to publish besides the dead letter, e.g. a rejection the requester
# can act on. `data` is hostile: an answer checks what it takes from it.
InvalidRequestAnswer = Callable[[dict[str, Any], str, str], list[tuple[str, Payload, str]]]


@dataclass
class BatchOutcome:
    """What became of each record of a batch, counted once the transaction committed."""

    outcomes: list[tuple[str, str]] = field(default_factory=list)  # (topic, outcome)
    # Why each dead letter written by this batch was written (contract_violation, handler_failed):
    # a record dead-lettered before is not written, nor counted, again.
    dead_letters: list[str] = field(default_factory=list)

    def add(self, topic: str, outcome: str) -> None:
        self.outcomes.append((topic, outcome))

    def count(self, outcome: str) -> int:
        return sum(1 for _, o in self.outcomes if o == outcome)


class MessageProcessor:
    """Runs the recipe for one service: `await processor.handle(records)`, then commit offsets."""

    def __init__(
        self,
        *,
        service: str,
        pool: asyncpg.Pool,
        handlers: Mapping[str, Mapping[str, Handler]],
        deps: Any = None,
        answer_invalid: Mapping[str, InvalidRequestAnswer] | None = None,
        on_committed: Callable[[], None] | None = None,
        max_backoff: float = 30.0,
        savepoint_per_record: bool = False,
        set_based: bool = True,
    ) -> None:
        self.service = service
        self.pool = pool
        self.handlers = handlers  # topic -> event type -> handler
        self.deps = deps
        self._answer_invalid = answer_invalid or {}
        self._on_committed = on_committed
        self._max_backoff = max_backoff
        self._registries = {topic: models_for(topic) for topic in handlers}
        # Batches run optimistically (one inbox claim and one outbox write per batch, no
        # savepoints) and fall back to a savepoint per record only when a handler fails for good.
        self._savepoint_per_record = savepoint_per_record
        # Set-based handlers take a wave of records at once; off, each is called per record.
        self._set_based = set_based
        self.stopping = False

    async def handle(self, records: Sequence[Record]) -> BatchOutcome:
        parsed = [(record, self._parse(record)) for record in records]
        spans = tracing.consume(self.service, parsed)  # None when tracing is off
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                if self._savepoint_per_record:
                    outcome = await tracing.transaction(spans, self._handle_in_transaction(parsed))
                else:
                    try:
                        outcome = await tracing.transaction(spans, self._handle_batch_at_once(parsed))
                    except _RecordFailed:
                        # Rolled back whole; again record by record, so only the failing one is
                        # dead-lettered and the others keep their effect.
                        outcome = await tracing.transaction(spans, self._handle_in_transaction(parsed))
            except Exception as exc:
                if self.stopping:
                    raise
                # Never let a batch escape unprocessed: the subscriber would move on and a later
                # commit would skip it. A record's own failure is dead-lettered inside the
                # transaction; what reaches here is the database or broker (transient) or a fault
                # of the recipe itself, which an operator must see and which must not lose data.
                attempt += 1
                TRANSIENT_RETRIES.labels(self.service).inc()
                delay = backoff_delay(attempt, base=0.2, cap=self._max_backoff)
                (log.warning if is_transient(exc) else log.error)(
                    "batch rolled back; retrying" if is_transient(exc) else "batch cannot be processed; retrying",
                    error=type(exc).__name__,
                    detail=mask_text(str(exc))[:200],
                    attempt=attempt,
                    delay=round(delay, 2),
                    records=len(records),
                )
                await asyncio.sleep(delay)
                continue
            BATCH_SECONDS.labels(self.service).observe(time.perf_counter() - started)
            for topic, result in outcome.outcomes:
                MESSAGES.labels(self.service, topic, result).inc()
            for reason in outcome.dead_letters:
                DEAD_LETTERS.labels(self.service, reason).inc()
            if self._on_committed is not None and any(o in _WROTE for _, o in outcome.outcomes):
                self._on_committed()  # something was written: events to relay, perhaps rows due
            tracing.consumed(spans)
            return outcome

    def _parse(self, record: Record) -> Event | ContractViolation:
        registry = self._registries.get(record.topic)
        if registry is None:
            return ContractViolation(f"{self.service} does not consume topic {record.topic}")
        try:
            return parse_record(record.value, record.headers, registry)
        except ContractViolation as violation:
            return violation
        except Exception as exc:  # noqa: BLE001 - parse_record should not, but a record can never wedge us
            return ContractViolation(f"cannot be read ({type(exc).__name__})")

    async def _handle_in_transaction(self, parsed: Sequence[tuple[Record, Event | ContractViolation]]) -> BatchOutcome:
        """One savepoint per record: a record that fails for good is dead-lettered in place of
        its effect, and the others keep theirs."""
        outcome = BatchOutcome()
        async with self.pool.acquire() as conn, conn.transaction():
            for record, result in parsed:
                if isinstance(result, ContractViolation):
                    await self._refuse(conn, record, result, outcome)
                    continue
                try:
                    async with conn.transaction():  # a savepoint: this record's effect, or none of it
                        first = (
                            await inbox.claim(conn, self.service, result.id) if self._wants(record, result) else False
                        )
                        emitted = await self._apply(conn, record, result, first, outcome)
                        await outbox.write(conn, emitted)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    await self._handler_failed(conn, record, result, exc, outcome)
        return outcome

    async def _handle_batch_at_once(self, parsed: Sequence[tuple[Record, Event | ContractViolation]]) -> BatchOutcome:
        """One inbox claim and one outbox write for the whole batch, no savepoints; a record that
        fails for good raises `_RecordFailed`, and the batch is redone one savepoint per record."""
        outcome = BatchOutcome()
        emitted: list[outbox.OutgoingEvent] = []
        async with self.pool.acquire() as conn, conn.transaction():
            wanted = [r.id for rec, r in parsed if isinstance(r, Event) and self._wants(rec, r)]
            first_seen = await inbox.claim_many(conn, self.service, list(dict.fromkeys(wanted)))
            todo: list[tuple[Record, Event]] = []
            for record, result in parsed:
                if isinstance(result, ContractViolation):
                    await self._refuse(conn, record, result, outcome)
                    continue
                first = result.id in first_seen
                first_seen.discard(result.id)  # the same id twice in one batch: the second is a duplicate
                if self._set_based and first and self._wants(record, result):
                    todo.append((record, result))  # handled below, in waves
                    continue
                try:
                    emitted += await self._apply(conn, record, result, first, outcome)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    raise _RecordFailed from exc
            try:
                emitted += await self._apply_in_waves(conn, todo, outcome)
            except Exception as exc:
                if is_transient(exc):
                    raise
                raise _RecordFailed from exc
            await outbox.write(conn, emitted)
        return outcome

    async def _apply_in_waves(
        self, conn: Connection, todo: Sequence[tuple[Record, Event]], outcome: BatchOutcome
    ) -> list[outbox.OutgoingEvent]:
        """The first-seen records of a batch, wave by wave: a record's wave is the number of
        records before it with the same topic and key, so each key's records run in their order,
        one wave after the other. Within a wave the records of one set-based handler run as one
        set; the others run one by one. Records of different keys carry no order between them
        (Kafka keeps none across partitions either)."""
        waves: list[list[tuple[Record, Event]]] = []
        seen: dict[tuple[str, bytes | None], int] = {}
        for record, event in todo:
            key = (record.topic, record.key)
            wave = seen.get(key, 0)
            seen[key] = wave + 1
            if wave == len(waves):
                waves.append([])
            waves[wave].append((record, event))
        emitted: list[outbox.OutgoingEvent] = []
        for members in waves:
            groups: dict[Any, list[tuple[Record, Event]]] = {}
            for record, event in members:
                handler = self.handlers[record.topic][event.type]
                groups.setdefault(handler if isinstance(handler, SetBased) else (record.topic, event.id), []).append(
                    (record, event)
                )
            for handler_or_id, group in groups.items():
                if not isinstance(handler_or_id, SetBased):
                    record, event = group[0]
                    emitted += await self._apply(conn, record, event, True, outcome)
                    continue
                units = [self._unit(conn, record, event) for record, event in group]
                with tracing.handling(units, handler_or_id, group[0][1].type):
                    await handler_or_id.handle_many(units, [event.payload for _, event in group])
                for (record, _), unit in zip(group, units, strict=True):
                    outcome.add(record.topic, "processed")
                    emitted += unit.emitted
        return emitted

    def _unit(self, conn: Connection, record: Record, event: Event) -> Unit[Any]:
        traceparent, tracestate = tracing.record_context(record, event)
        return Unit(
            conn=conn,
            service=self.service,
            deps=self.deps,
            correlation_id=event.correlation_id,
            event=event,
            record_time=record_time(record),
            traceparent=traceparent,
            tracestate=tracestate,
        )

    def _wants(self, record: Record, event: Event) -> bool:
        return event.type in self.handlers[record.topic]

    async def _apply(
        self, conn: Connection, record: Record, event: Event, first: bool, outcome: BatchOutcome
    ) -> list[outbox.OutgoingEvent]:
        """The one path of a valid record, in either mode: its handler's effect and the events it
        emits, or nothing when this service ignores its type or has seen it (`first` is false)."""
        handler = self.handlers[record.topic].get(event.type)
        if handler is None:  # a contract event this service has no business with
            outcome.add(record.topic, "ignored")
            return []
        if not first:
            outcome.add(record.topic, "duplicate")
            return []
        structlog.contextvars.bind_contextvars(
            correlation_id=event.correlation_id, event_id=event.id, event_type=event.type
        )
        try:
            unit = self._unit(conn, record, event)
            with tracing.handling([unit], handler, event.type):
                await handler(unit, event.payload)
        finally:
            structlog.contextvars.unbind_contextvars("correlation_id", "event_id", "event_type")
        outcome.add(record.topic, "processed")
        return unit.emitted

    async def _refuse(
        self, conn: Connection, record: Record, violation: ContractViolation, outcome: BatchOutcome
    ) -> None:
        """A record that breaks the contract: its dead letter (and answer), once per position."""
        if await self._dead_letter(conn, record, str(violation), claim_id=_position_id(record)):
            outcome.dead_letters.append("contract_violation")
            await self._answer(conn, violation)
        outcome.add(record.topic, "dead_lettered")

    async def _handler_failed(
        self, conn: Connection, record: Record, event: Event, exc: Exception, outcome: BatchOutcome
    ) -> None:
        """It will fail the same way every time: record why, in place of its effect, once. The log
        names only the error's type (its text may quote personal data); the dead letter, readable
        by ops only, has the whole reason."""
        if await self._dead_letter(
            conn,
            record,
            f"{type(exc).__name__}: {exc}"[:2000],
            claim_id=event.id,
            log_reason=f"handler failed: {type(exc).__name__}",
        ):
            outcome.dead_letters.append("handler_failed")
        outcome.add(record.topic, "dead_lettered")

    async def _answer(self, conn: Connection, violation: ContractViolation) -> None:
        envelope = violation.envelope
        answer = self._answer_invalid.get(envelope.type) if envelope is not None else None
        if envelope is None or answer is None:
            return
        try:
            events = [
                outbox.outgoing(
                    topic,
                    payload,
                    subject=subject,
                    source=f"service/{self.service}",
                    correlation_id=envelope.correlationid or envelope.id,
                )
                for topic, payload, subject in answer(envelope.data, str(violation), envelope.subject)
            ]
        except Exception as exc:  # noqa: BLE001 - hostile data may defeat the answer; the dead letter stands
            log.warning("no answer to an invalid request", event_type=envelope.type, error=type(exc).__name__)
            return
        await outbox.write(conn, events)

    async def _dead_letter(
        self, conn: Connection, record: Record, error: str, *, claim_id: str, log_reason: str | None = None
    ) -> bool:
        if not await inbox.claim(conn, self.service, claim_id):
            return False  # this very record was dead-lettered before
        await outbox.write(conn, [dead_letter(self.service, record, error)])
        log.warning(
            "dead-lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=(log_reason or error)[:300],
        )
        return True


def _position_id(record: Record) -> str:
    """The inbox id of a record that cannot be read: where it sits, and what it is (its broker
    timestamp and a digest of its bytes). The same record redelivered has the same id, so it is
    dead-lettered once; a different record that comes to sit at the same position, because the
    topic was deleted and made again or the cluster's storage was formatted anew while our
    database kept its inbox, has another id, and is dead-lettered rather than taken for one
    already refused (which would drop it without a trace)."""
    digest = hashlib.blake2b(record.value or b"", digest_size=8).hexdigest()
    return f"position:{record.topic}:{record.partition}:{record.offset}:{record.timestamp}:{digest}"


def dead_letter(service: str, record: Record, error: str) -> outbox.OutgoingEvent:
    """The dead-letter record for `record`: original bytes, where it came from, and why."""
    payload = MessageDeadLettered.of(
        service=service,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        error=error,
        at=datetime.now(UTC),
    )
    return outbox.outgoing(
        dead_letter_topic(service),
        payload,
        subject=payload.original_key or f"{record.topic}/{record.partition}/{record.offset}",
        source=f"service/{service}",
        correlation_id=None,
    )

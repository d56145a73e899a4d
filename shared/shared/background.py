"""Background work on one building block: a job declares which rows are due and the work for
one row; one runner claims, acts, records, publishes, paces and backs off for every job.

Two shapes of job (docs/style.md#background-work-on-one-building-block):

- `DueWork`, all inside our database: each round claims due rows in ONE transaction (the job's
  `claim`, in its repository: `FOR UPDATE SKIP LOCKED`, or a status it moves the rows out of),
  runs `act(unit, row)` for each row under a savepoint of that transaction (none when the job
  says its `act` writes nothing: a set-based claim made the changes), writes the events
  the units emitted to the outbox in the same transaction, commits, then wakes the relay. A
  row's change and its events commit together or not at all.
- `DueCall`, a side effect outside (a card charge, an email, an SMS): the claim and its lease
  commit first, in a transaction of their own, so the row is not claimed again while its call
  is in flight; `call(deps, row)` runs outside every transaction; `record(unit, row, outcome)`
  writes the outcome and its events in a second transaction, which also records the outcomes
  of the calls that finished while the one before it was being recorded (group commit: with
  calls running concurrently, a transaction per few outcomes rather than per outcome). A call whose outcome is unknown
  (`call` returns None) is recorded nowhere: the row is due again when its lease ends, and the
  job's idempotency key makes the repeated call harmless. The window where a call can repeat
  (after the provider answered, before the record committed) is the job's to name in its
  docstring; the runner keeps it short by retrying the record while the database is down.

For both shapes, with any number of replicas:
- A transient fault (`shared.consumer.is_transient`: the database or broker down, a timeout, a
  serialization failure) rolls the round back, and the round is tried again after an
  exponential, jittered backoff (`shared.backoff`). Nothing of a rolled-back round is published.
- A row that fails for good is isolated: its own work is rolled back (its savepoint), the
  failure is logged and counted, and the job's `on_failure(unit, row, error)` may record it
  (mark the row, tell a person); the rows beside it keep their effect. Whether the row comes
  back is the claim's to say: a lease or a status the claim changes keeps it away, a bare row
  lock does not (it is tried again next round). A round where every row failed is never
  repeated at once, so failing rows cannot spin the loop.
- Rounds run every `interval_seconds`, less up to a fifth at random so replicas drift apart (or
  sooner when `next_due` says work falls due by the clock), and again at once after a full
  batch that made progress. The loop stops when the runtime stops (a round in flight is rolled
  back by the cancellation; `DueCall.drain_seconds` lets calls in flight finish and be recorded).
- `cancellations_background_rows_total{service, job, outcome}` counts rows handled, failed and deferred;
  `cancellations_background_retries_total{service, job}` counts rounds rolled back and retried.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import asyncpg
import structlog

from . import outbox
from .backoff import backoff_delay
from .consumer import UnitOfWork, is_transient
from .db import Connection
from .logging import get_logger
from .metrics import BACKGROUND_RETRIES, BACKGROUND_ROWS
from .redaction import mask_text

log = get_logger(__name__)

Row = TypeVar("Row")
Outcome = TypeVar("Outcome")
D = TypeVar("D")

# A poll waits between (1 − POLL_JITTER) × interval and the interval itself.
POLL_JITTER = 0.2
# After a round was rolled back: 0.5 s, 1 s, 2 s, … up to 30 s, jittered.
RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 30.0
# A side effect's outcome is recorded with this many tries (about half a minute of an
# unreachable database): until it commits, the call counts as not made and is made again.
RECORD_ATTEMPTS = 7
RECORD_RETRY_BASE_SECONDS = 0.5
RECORD_RETRY_CAP_SECONDS = 10.0

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class WorkUnit(UnitOfWork[D]):
    """A background job's unit of work: a handler's `UnitOfWork` (connection, dependencies,
    `emit`) and the time of its round, which the job decides by instead of reading the clock."""

    now: datetime = field(kw_only=True)


# (conn, now, limit) -> the rows due at `now`, at most `limit`, claimed inside the caller's transaction.
Claim = Callable[[Connection, datetime, int], Awaitable[Sequence[Row]]]
Failure = Callable[[WorkUnit[D], Row, Exception], Awaitable[None]]


def _no_correlation(row: Any) -> str | None:
    return None


@dataclass(frozen=True, kw_only=True)
class Job(Generic[Row, D]):
    """What every job declares; use `DueWork` or `DueCall`."""

    name: str  # the task's name, in logs and metrics
    claim: Claim[Row]
    interval_seconds: float
    batch_size: int
    # The correlation id a row's events carry (the request that caused the row), if any.
    correlation: Callable[[Row], str | None] = _no_correlation
    # A row's id for log lines (never the row itself: it may hold personal data).
    key: Callable[[Row], object] | None = None
    # A row that failed for good: record it (mark the row, emit a failure) so it is not taken
    # again; None leaves it to the claim (see the module's docstring).
    on_failure: Failure[D, Row] | None = None
    # Seconds from `now` until work falls due by the clock alone, when that is known (a nightly
    # run): the runner wakes then rather than at the next interval.
    next_due: Callable[[datetime], float] | None = None
    # Wait this long (jittered: half of it to all of it) before the first round.
    first_delay_seconds: float = 0.0
    # Log each round that handled rows at info (for jobs whose rows log nothing of their own).
    log_rounds: bool = False
    # The service's own consumer makes this job's rows due (billing's charges to capture,
    # notification's messages to send): each batch it commits wakes the job at once, rather
    # than the rows waiting out the rest of the interval. The interval still paces the rounds
    # when nothing is committed (rows due by the clock, a lease ended, another replica's rows).
    wake_on_commit: bool = False

    @property
    def __name__(self) -> str:  # what shared.service names the background task by
        return self.name

    async def __call__(self, runtime: Host) -> None:
        """The background task (`ServiceDefinition.background`): rounds until the runtime stops."""
        await run(self, runtime)


@dataclass(frozen=True, kw_only=True)
class DueWork(Job[Row, D]):
    """A job done inside the database: `act(unit, row)` runs in the claim's transaction, under
    a savepoint of its own. No `act`: the claim is the whole work (it deletes or moves the rows)."""

    act: Callable[[WorkUnit[D], Row], Awaitable[None]] | None = None
    # False for an `act` that writes nothing (the claim made the rows' changes; `act` emits their
    # events or raises): it then runs without a savepoint, two statements fewer per row.
    savepoint: bool = True


@dataclass(frozen=True, kw_only=True)
class DueCall(Job[Row, D], Generic[Row, Outcome, D]):
    """A job whose work is a call outside the database: the claim (with its lease) commits, then
    `call(deps, row)` runs outside any transaction, then `record(unit, row, outcome)` commits the
    outcome and its events. `call` returns None when the outcome is unknown (the lease brings
    the row back)."""

    call: Callable[[D, Row], Awaitable[Outcome | None]]
    record: Callable[[WorkUnit[D], Row, Outcome], Awaitable[None]]
    # How many rows of a batch are called at once (1: one after the other).
    concurrency: int = 1
    # At shutdown, calls in flight get this long to finish and be recorded; 0 cancels them.
    drain_seconds: float = 0.0


class Host(Protocol):
    """What the runner needs of a running service (`shared.service.Runtime`)."""

    pool: asyncpg.Pool
    deps: Any
    stopping: bool

    @property
    def name(self) -> str: ...

    def wake_relay(self) -> None: ...

    def commit_signal(self) -> asyncio.Event:
        """An event set whenever the service's consumer commits a batch (a new one per call)."""
        ...


@dataclass
class Round:
    """What one round did: rows claimed, and of those handled, failed for good, deferred."""

    claimed: int = 0
    handled: int = 0
    failed: int = 0
    deferred: int = 0


async def run(
    job: Job[Any, Any],
    host: Host,
    *,
    clock: Clock = utc_now,
    sleep: Sleep = asyncio.sleep,
    rng: Callable[[], float] = random.random,
) -> None:
    """Run `job` in rounds until `host` stops (see the module's docstring)."""
    structlog.contextvars.bind_contextvars(job=job.name)
    committed = host.commit_signal() if job.wake_on_commit else None
    if job.first_delay_seconds > 0:
        await sleep(backoff_delay(1, base=job.first_delay_seconds, cap=job.first_delay_seconds, rng=rng))
    failures = 0
    while not host.stopping:
        try:
            done = await run_round(
                job,
                pool=host.pool,
                service=host.name,
                deps=host.deps,
                on_committed=host.wake_relay,
                stopping=lambda: host.stopping,
                clock=clock,
                sleep=sleep,
            )
        except Exception as exc:  # noqa: BLE001 - a round is retried, never dropped
            if host.stopping:
                return
            failures += 1
            BACKGROUND_RETRIES.labels(host.name, job.name).inc()
            delay = backoff_delay(failures, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS, rng=rng)
            (log.warning if is_transient(exc) else log.error)(
                "background round rolled back; retrying" if is_transient(exc) else "background round failed; retrying",
                error=type(exc).__name__,
                detail=mask_text(str(exc))[:200],
                attempt=failures,
                delay=round(delay, 2),
            )
            await sleep(delay)
            continue
        failures = 0
        if done.claimed >= job.batch_size and done.handled > 0:
            continue  # a full batch: more may be due now
        await _wait(pause(job, clock(), rng), committed, sleep)


async def _wait(seconds: float, committed: asyncio.Event | None, sleep: Sleep) -> None:
    """The pause between rounds; for a job woken by commits, cut short by the next commit (or
    none at all when one came during the round just done)."""
    if committed is None:
        await sleep(seconds)
        return
    if not committed.is_set():
        try:
            await asyncio.wait_for(committed.wait(), timeout=seconds)
        except TimeoutError:
            pass
    committed.clear()


def pause(job: Job[Any, Any], now: datetime, rng: Callable[[], float] = random.random) -> float:
    """How long to wait before the next round: the jittered interval, or less when `next_due`
    says work falls due sooner."""
    wait = backoff_delay(1, base=job.interval_seconds, cap=job.interval_seconds, jitter=POLL_JITTER, rng=rng)
    if job.next_due is not None:
        wait = min(wait, max(0.0, job.next_due(now)))
    return wait


def _nothing() -> None:
    return None


def _never() -> bool:
    return False


async def run_round(
    job: Job[Any, Any],
    *,
    pool: asyncpg.Pool,
    service: str,
    deps: Any,
    on_committed: Callable[[], None] = _nothing,
    stopping: Callable[[], bool] = _never,
    clock: Clock = utc_now,
    sleep: Sleep = asyncio.sleep,
) -> Round:
    """One round of `job`: claim the due rows and do their work. Raises what rolled the round
    back (a transient fault, or a fault of the claim itself); a row's own failure does not."""
    started = time.perf_counter()
    if isinstance(job, DueCall):
        done = await _call_round(job, pool, service, deps, on_committed, stopping, clock, sleep)
    elif isinstance(job, DueWork):
        done = await _work_round(job, pool, service, deps, on_committed, clock)
    else:
        raise TypeError(f"not a background job: {job!r}")
    for outcome in ("handled", "failed", "deferred"):
        if count := getattr(done, outcome):
            BACKGROUND_ROWS.labels(service, job.name, outcome).inc(count)
    if done.claimed:
        (log.info if job.log_rounds else log.debug)(
            "background round",
            job=job.name,
            claimed=done.claimed,
            handled=done.handled,
            failed=done.failed,
            deferred=done.deferred,
            seconds=round(time.perf_counter() - started, 3),
        )
    return done


async def _work_round(
    job: DueWork[Any, Any], pool: asyncpg.Pool, service: str, deps: Any, on_committed: Callable[[], None], clock: Clock
) -> Round:
    done = Round()
    now = clock()
    events: list[outbox.OutgoingEvent] = []
    async with pool.acquire() as conn, conn.transaction():
        rows = await job.claim(conn, now, job.batch_size)
        done.claimed = len(rows)
        if job.act is None:
            done.handled = len(rows)
        else:
            for row in rows:
                unit = WorkUnit(conn=conn, service=service, deps=deps, correlation_id=job.correlation(row), now=now)
                try:
                    with _bound(unit.correlation_id):
                        if job.savepoint:
                            async with conn.transaction():  # a savepoint: this row's effect, or none of it
                                await job.act(unit, row)
                        else:
                            await job.act(unit, row)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    done.failed += 1
                    events += await _failed(job, conn, service, deps, row, exc, now)
                    continue
                done.handled += 1
                events += unit.emitted
        await outbox.write(conn, events)
    if events:
        on_committed()
    return done


async def _failed(
    job: Job[Any, Any], conn: Connection, service: str, deps: Any, row: Any, exc: Exception, now: datetime
) -> list[outbox.OutgoingEvent]:
    """Log a row that failed for good and let the job record it (inside the caller's
    transaction, under a savepoint); returns what `on_failure` emitted."""
    log.error(
        "background row failed",
        job=job.name,
        row=job.key(row) if job.key else None,
        error=type(exc).__name__,
        detail=mask_text(str(exc))[:300],
        recorded=job.on_failure is not None,
    )
    if job.on_failure is None:
        return []
    unit = WorkUnit(conn=conn, service=service, deps=deps, correlation_id=job.correlation(row), now=now)
    try:
        with _bound(unit.correlation_id):
            async with conn.transaction():
                await job.on_failure(unit, row, exc)
    except Exception as failure:
        if is_transient(failure):
            raise
        log.error(
            "a failed background row could not be recorded",
            job=job.name,
            error=type(failure).__name__,
            detail=mask_text(str(failure))[:300],
        )
        return []
    return unit.emitted


async def _call_round(
    job: DueCall[Any, Any, Any],
    pool: asyncpg.Pool,
    service: str,
    deps: Any,
    on_committed: Callable[[], None],
    stopping: Callable[[], bool],
    clock: Clock,
    sleep: Sleep,
) -> Round:
    done = Round()
    async with pool.acquire() as conn, conn.transaction():
        rows = await job.claim(conn, clock(), job.batch_size)
    done.claimed = len(rows)
    # Claimed and leased: from here on a row that is not recorded comes back when its lease ends.
    slots = asyncio.Semaphore(max(1, job.concurrency))
    recorder = _GroupRecorder(job, pool, service, deps, on_committed, clock, sleep)

    async def one(row: Any) -> str:
        async with slots:
            if stopping():
                return "deferred"
            outcome = await _call(job, pool, service, deps, row, on_committed, clock)
        # Recorded outside the slot: the next call starts while this outcome waits to be recorded.
        return outcome if isinstance(outcome, str) else await recorder.record(row, outcome.value)

    batch = asyncio.gather(*(one(row) for row in rows))
    if job.drain_seconds > 0:
        try:
            outcomes = await asyncio.shield(batch)
        except asyncio.CancelledError:
            # Shutting down: let the calls in flight finish and be recorded, because a call cut
            # off now would be made again when its lease ends.
            try:
                await asyncio.wait_for(batch, timeout=job.drain_seconds)
            except Exception as exc:  # noqa: BLE001 - stopping either way; the leases bring them back
                log.warning("background calls cut off at shutdown", job=job.name, error=type(exc).__name__)
            raise
    else:
        outcomes = await batch
    for outcome in outcomes:
        setattr(done, outcome, getattr(done, outcome) + 1)
    return done


@dataclass(frozen=True)
class _Called:
    """A call that returned an outcome, to be recorded."""

    value: Any


async def _call(
    job: DueCall[Any, Any, Any],
    pool: asyncpg.Pool,
    service: str,
    deps: Any,
    row: Any,
    on_committed: Callable[[], None],
    clock: Clock,
) -> str | _Called:
    """One claimed row's call, outside any transaction: its outcome to record, or deferred (no
    outcome known: the lease brings the row back) or failed (recorded here). Raises nothing but
    a cancellation."""
    with _bound(job.correlation(row)):
        try:
            outcome = await job.call(deps, row)
        except Exception as exc:  # noqa: BLE001 - a call that raises is a failed row, not a failed loop
            if is_transient(exc):
                log.warning(
                    "background call failed; the row is due again when its lease ends",
                    job=job.name,
                    row=job.key(row) if job.key else None,
                    error=type(exc).__name__,
                )
                return "deferred"
            await _record_failure(job, pool, service, deps, row, exc, on_committed, clock)
            return "failed"
    return "deferred" if outcome is None else _Called(outcome)


class _GroupRecorder:
    """Records the outcomes of a round's calls: the outcomes of calls that finish while another
    outcome is being recorded wait, and are then recorded together, in ONE transaction (group
    commit), rather than one transaction each. An outcome waits for the transaction in flight
    (and, while the database refuses it, that transaction's retries), so the window in which a
    call can repeat is about as short as it was. A group's rows are recorded in the order of
    their keys, so two groups (or a group and the service's consumer) lock rows in one order.
    Any failure of a group of more than one, for good or not, rolls it back and records its
    rows one at a time, each with its own retries: only a row that cannot be recorded fails,
    and its neighbours, whose calls were made, are recorded. Calls are not held back while an
    outcome is recorded: with one call at a time, the next call starts as the last outcome is
    being recorded."""

    def __init__(
        self,
        job: DueCall[Any, Any, Any],
        pool: asyncpg.Pool,
        service: str,
        deps: Any,
        on_committed: Callable[[], None],
        clock: Clock,
        sleep: Sleep,
    ) -> None:
        self.job, self.pool, self.service, self.deps = job, pool, service, deps
        self.on_committed, self.clock, self.sleep = on_committed, clock, sleep
        self._pending: list[tuple[Any, Any, asyncio.Future[str]]] = []
        self._lock = asyncio.Lock()

    async def record(self, row: Any, outcome: Any) -> str:
        """`row`'s outcome recorded (with whatever else is waiting): handled or failed."""
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((row, outcome, done))
        while not done.done():
            async with self._lock:
                if done.done():
                    break
                group, self._pending = self._pending, []
                try:
                    await self._record(group)
                finally:
                    # Cut off (a cancellation): what the group did not settle waits for the next.
                    self._pending[:0] = [item for item in group if not item[2].done()]
        return done.result()

    async def _record(self, group: list[tuple[Any, Any, asyncio.Future[str]]]) -> None:
        job = self.job
        key = job.key
        if key is not None and len(group) > 1:
            group = sorted(group, key=lambda item: str(key(item[0])))
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                emitted: list[outbox.OutgoingEvent] = []
                async with self.pool.acquire() as conn, conn.transaction():
                    for row, outcome, _ in group:
                        unit = WorkUnit(
                            conn=conn,
                            service=self.service,
                            deps=self.deps,
                            correlation_id=job.correlation(row),
                            now=self.clock(),
                        )
                        with _bound(unit.correlation_id):
                            await job.record(unit, row, outcome)
                        emitted += unit.emitted
                    await outbox.write(conn, emitted)
            except Exception as exc:  # noqa: BLE001 - transient: retried; otherwise a failed row
                if len(group) > 1:
                    # One row may be the cause (a constraint, a lock held elsewhere): each alone,
                    # so only a row that cannot be recorded fails.
                    for item in group:
                        await self._record([item])
                    return
                if not is_transient(exc):
                    row, _, done = group[0]
                    await _record_failure(
                        job, self.pool, self.service, self.deps, row, exc, self.on_committed, self.clock
                    )
                    done.set_result("failed")
                    return
                log.warning(
                    "could not record a background outcome; retrying",
                    job=job.name,
                    rows=[job.key(row) for row, _, _ in group] if job.key else len(group),
                    error=type(exc).__name__,
                    attempt=attempt,
                )
                await self.sleep(backoff_delay(attempt, base=RECORD_RETRY_BASE_SECONDS, cap=RECORD_RETRY_CAP_SECONDS))
                continue
            if emitted:
                self.on_committed()
            for _, _, done in group:
                done.set_result("handled")
            return
        log.error(
            "background outcome not recorded; the call is made again when the lease ends",
            job=job.name,
            rows=[job.key(row) for row, _, _ in group] if job.key else len(group),
        )
        for _, _, done in group:
            done.set_result("failed")


async def _record_failure(
    job: Job[Any, Any],
    pool: asyncpg.Pool,
    service: str,
    deps: Any,
    row: Any,
    exc: Exception,
    on_committed: Callable[[], None],
    clock: Clock,
) -> None:
    """A row of a `DueCall` that failed for good, logged and handed to `on_failure` in a
    transaction of its own (a fault there is logged: the lease brings the row back)."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            events = await _failed(job, conn, service, deps, row, exc, clock())
            await outbox.write(conn, events)
    except Exception as failure:  # noqa: BLE001 - the lease brings the row back
        log.error("a failed background row could not be recorded", job=job.name, error=type(failure).__name__)
        return
    if events:
        on_committed()


class _bound:
    """Log lines of a row's work carry the correlation id of its events."""

    def __init__(self, correlation_id: str | None) -> None:
        self._correlation_id = correlation_id

    def __enter__(self) -> None:
        if self._correlation_id is not None:
            structlog.contextvars.bind_contextvars(correlation_id=self._correlation_id)

    def __exit__(self, *exc: object) -> None:
        if self._correlation_id is not None:
            structlog.contextvars.unbind_contextvars("correlation_id")

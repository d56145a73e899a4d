"""The background runner (shared.background) against a fake database, a fake clock and a fake
sleep: what commits together, what one failing row may and may not undo, when a round repeats,
waits or backs off, and that a side effect runs between two transactions, never inside one."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from shared import background
from shared.background import DueCall, DueWork, WorkUnit
from shared.contracts.scoring import HoldLifted
from shared.topics import SCORING_EVENTS

START = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)


# --- a database that remembers only what committed --------------------------------------------


@dataclass
class FakeDb:
    effects: list[Any] = field(default_factory=list)  # what committed, in commit order
    events: list[tuple[str, str]] = field(default_factory=list)  # committed outbox rows (type, key)
    commits: int = 0
    rollbacks: int = 0
    open: int = 0  # transactions open right now, on any connection


class FakeConn:
    def __init__(self, db: FakeDb) -> None:
        self.db = db
        self.frames: list[list[tuple[str, Any]]] = []  # the transaction, then its savepoints

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    def effect(self, what: Any) -> None:
        assert self.frames, "a change outside any transaction"
        self.frames[-1].append(("effect", what))

    async def execute(self, sql: str, *columns: Sequence[Any]) -> None:
        assert sql.startswith("INSERT INTO outbox")  # one statement for all rows, a column per array
        self.frames[-1].extend(("event", (row[3], row[2])) for row in zip(*columns, strict=True))


class _Transaction:
    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn

    async def __aenter__(self) -> None:
        if not self.conn.frames:
            self.conn.db.open += 1
        self.conn.frames.append([])

    async def __aexit__(self, kind: object, exc: object, tb: object) -> bool:
        frame = self.conn.frames.pop()
        top = not self.conn.frames
        if top:
            self.conn.db.open -= 1
        if kind is not None:  # rolled back: the savepoint's or the transaction's changes vanish
            self.conn.db.rollbacks += top
            return False
        if not top:
            self.conn.frames[-1].extend(frame)
            return False
        self.conn.db.commits += 1
        for what, value in frame:
            (self.conn.db.effects if what == "effect" else self.conn.db.events).append(value)
        return False


class _Acquired:
    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn

    async def __aenter__(self) -> FakeConn:
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        assert not self.conn.frames, "a connection released inside a transaction"


class FakePool:
    def __init__(self, db: FakeDb) -> None:
        self.db = db

    def acquire(self) -> _Acquired:
        return _Acquired(FakeConn(self.db))


@dataclass
class FakeHost:
    """What the runner needs of a runtime (background.Host)."""

    pool: Any
    name: str
    deps: Any = None
    stopping: bool = False
    woken: int = 0

    def wake_relay(self) -> None:
        self.woken += 1

    def __post_init__(self) -> None:
        self.committed = asyncio.Event()  # what the service's consumer sets at each commit
        self.subscribed = 0

    def commit_signal(self) -> asyncio.Event:
        self.subscribed += 1
        return self.committed


class Clock:
    """A clock that moves only when the runner sleeps; the runner stops after `rounds` sleeps."""

    def __init__(self, host: FakeHost, *, sleeps: int) -> None:
        self.now = START
        self.host = host
        self.slept: list[float] = []
        self.left = sleeps

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)
        self.left -= 1
        if self.left <= 0:
            self.host.stopping = True
        await asyncio.sleep(0)


def service() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


def counted(service_name: str, job: str, outcome: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "cancellations_background_rows_total", {"service": service_name, "job": job, "outcome": outcome}
        )
        or 0.0
    )


def lifted(row: str) -> HoldLifted:
    return HoldLifted.new(hold_id=f"hold-{row}", professional_id=f"pro-{row}", cause="expired")


class Table:
    """Rows due at given times; `claim` takes the due ones that are not done, like SKIP LOCKED
    would, and (with `marks=True`) moves them out of the due set as a status change would."""

    def __init__(self, due: dict[str, datetime], *, marks: bool = False) -> None:
        self.due = due
        self.done: set[str] = set()
        self.marks = marks
        self.claims: list[tuple[datetime, int]] = []

    async def claim(self, conn: asyncpg.Connection, now: datetime, limit: int) -> list[str]:
        self.claims.append((now, limit))
        rows = sorted(r for r, at in self.due.items() if at <= now and r not in self.done)[:limit]
        if self.marks:
            self.done.update(rows)
            for row in rows:
                conn.effect(("claimed", row))  # type: ignore[attr-defined]
        return rows


async def act(unit: WorkUnit[Any], row: str) -> None:
    unit.conn.effect(("acted", row))  # type: ignore[attr-defined]
    unit.emit(SCORING_EVENTS, lifted(row), subject=f"pro-{row}")


# --- DueWork: one transaction per round --------------------------------------------------------


async def test_a_round_acts_on_each_due_row_and_commits_their_events_with_them() -> None:
    db, name = FakeDb(), service()
    table = Table({"a": START, "b": START, "later": START + timedelta(hours=1)})
    job = DueWork(name="expire", claim=table.claim, act=act, interval_seconds=5, batch_size=10)
    woken: list[bool] = []

    done = await background.run_round(
        job, pool=FakePool(db), service=name, deps=None, on_committed=lambda: woken.append(True), clock=lambda: START
    )

    assert (done.claimed, done.handled, done.failed) == (2, 2, 0)
    assert db.effects == [("acted", "a"), ("acted", "b")]
    assert db.events == [("hold.lifted", "pro-a"), ("hold.lifted", "pro-b")]
    assert db.commits == 1 and woken == [True]  # one transaction, the relay woken after it
    assert counted(name, "expire", "handled") == 2


async def test_nothing_to_publish_wakes_nobody() -> None:
    db, woken = FakeDb(), []
    job = DueWork(name="quiet", claim=Table({}).claim, act=act, interval_seconds=5, batch_size=10)
    done = await background.run_round(
        job, pool=FakePool(db), service=service(), deps=None, on_committed=lambda: woken.append(True)
    )
    assert done.claimed == 0 and woken == [] and db.events == []


async def test_the_rows_events_carry_the_correlation_id_of_what_caused_them() -> None:
    seen: list[str | None] = []

    async def remembers(unit: WorkUnit[Any], row: str) -> None:
        seen.append(unit.emit(SCORING_EVENTS, lifted(row), subject=row) and unit.correlation_id)
        assert unit.emitted[0].envelope["correlationid"] == f"cause-{row}"
        assert unit.emitted[0].envelope["source"] == "service/scoring"

    job = DueWork(
        name="c",
        claim=Table({"x": START}).claim,
        act=remembers,
        correlation=lambda row: f"cause-{row}",
        interval_seconds=1,
        batch_size=5,
    )
    await background.run_round(job, pool=FakePool(FakeDb()), service="scoring", deps=None, clock=lambda: START)
    assert seen == ["cause-x"]


async def test_a_row_that_fails_for_good_is_rolled_back_alone_and_recorded() -> None:
    db, name = FakeDb(), service()
    recorded: list[tuple[str, str]] = []

    async def breaks_on_b(unit: WorkUnit[Any], row: str) -> None:
        unit.conn.effect(("acted", row))  # type: ignore[attr-defined]
        unit.emit(SCORING_EVENTS, lifted(row), subject=f"pro-{row}")
        if row == "b":
            raise ValueError("the stored command cannot be read")

    async def mark(unit: WorkUnit[Any], row: str, error: Exception) -> None:
        recorded.append((row, type(error).__name__))
        unit.conn.effect(("failed", row))  # type: ignore[attr-defined]
        unit.emit(SCORING_EVENTS, lifted(f"{row}-failure"), subject=f"pro-{row}")

    table = Table({"a": START, "b": START, "c": START})
    job = DueWork(
        name="isolate", claim=table.claim, act=breaks_on_b, on_failure=mark, interval_seconds=1, batch_size=10
    )
    done = await background.run_round(job, pool=FakePool(db), service=name, deps=None, clock=lambda: START)

    assert (done.handled, done.failed) == (2, 1)
    assert db.effects == [("acted", "a"), ("failed", "b"), ("acted", "c")]  # b's own work is gone
    assert db.events == [("hold.lifted", "pro-a"), ("hold.lifted", "pro-b"), ("hold.lifted", "pro-c")]  # in row order
    assert recorded == [("b", "ValueError")]
    assert counted(name, "isolate", "failed") == 1


async def test_a_failure_recording_a_failed_row_does_not_undo_the_others() -> None:
    db = FakeDb()

    async def always(unit: WorkUnit[Any], row: str) -> None:
        raise ValueError("broken")

    async def cannot_mark(unit: WorkUnit[Any], row: str, error: Exception) -> None:
        unit.conn.effect(("half-marked", row))  # type: ignore[attr-defined]
        raise KeyError("broken too")

    table = Table({"a": START}, marks=True)
    job = DueWork(name="x", claim=table.claim, act=always, on_failure=cannot_mark, interval_seconds=1, batch_size=10)
    done = await background.run_round(job, pool=FakePool(db), service=service(), deps=None, clock=lambda: START)
    assert done.failed == 1
    assert db.effects == [("claimed", "a")]  # the claim stands; neither the work nor the half mark


async def test_a_transient_fault_rolls_the_whole_round_back() -> None:
    db = FakeDb()

    async def database_gone_on_b(unit: WorkUnit[Any], row: str) -> None:
        await act(unit, row)
        if row == "b":
            raise ConnectionResetError("connection reset by peer")

    table = Table({"a": START, "b": START}, marks=True)
    job = DueWork(name="x", claim=table.claim, act=database_gone_on_b, interval_seconds=1, batch_size=10)
    with pytest.raises(ConnectionResetError):
        await background.run_round(job, pool=FakePool(db), service=service(), deps=None, clock=lambda: START)
    assert db.effects == [] and db.events == [] and db.rollbacks == 1  # the claim too: due again


async def test_without_act_the_claim_is_the_work() -> None:
    db, name = FakeDb(), service()
    table = Table({f"r{i}": START for i in range(7)}, marks=True)
    job: DueWork[str, Any] = DueWork(name="prune", claim=table.claim, interval_seconds=60, batch_size=5)
    done = await background.run_round(job, pool=FakePool(db), service=name, deps=None, clock=lambda: START)
    assert (done.claimed, done.handled) == (5, 5) and db.commits == 1
    assert counted(name, "prune", "handled") == 5


async def test_an_act_that_writes_nothing_runs_without_a_savepoint_and_still_fails_alone() -> None:
    db, name = FakeDb(), service()
    depths: list[int] = []
    recorded: list[str] = []

    async def emits(unit: WorkUnit[Any], row: str) -> None:
        depths.append(len(unit.conn.frames))  # type: ignore[attr-defined]
        unit.emit(SCORING_EVENTS, lifted(row), subject=f"pro-{row}")
        if row == "b":
            raise ValueError("cannot be lifted")

    async def mark(unit: WorkUnit[Any], row: str, error: Exception) -> None:
        recorded.append(row)

    table = Table({"a": START, "b": START, "c": START}, marks=True)
    job = DueWork(
        name="emit-only",
        claim=table.claim,
        act=emits,
        savepoint=False,
        on_failure=mark,
        interval_seconds=1,
        batch_size=10,
    )
    done = await background.run_round(job, pool=FakePool(db), service=name, deps=None, clock=lambda: START)
    assert depths == [1, 1, 1]  # in the round's transaction, no savepoint of its own
    assert (done.handled, done.failed) == (2, 1) and recorded == ["b"]
    assert db.events == [("hold.lifted", "pro-a"), ("hold.lifted", "pro-c")]  # b's event is not written


# --- scoring's hold expiry on this runner ------------------------------------------------------


async def test_hold_expiry_lifts_a_batch_with_one_statement_and_a_failing_professional_blocks_no_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from scoring import repository, scheduler

    due = {"pro-a", "pro-bad", "pro-c"}
    deferred: dict[str, datetime] = {}
    lifts: list[list[str]] = []

    async def lock(conn: Any, now: datetime, limit: int) -> list[str]:
        return sorted(p for p in due if deferred.get(p, now) <= now)[:limit]

    async def expire(conn: FakeConn, ids: Sequence[str], now: datetime) -> list[dict[str, Any]]:
        lifts.append(list(ids))
        conn.effect(("lifted", tuple(ids)))
        if "pro-bad" in ids:
            raise ValueError("a hold that cannot be lifted")
        due.difference_update(ids)
        return [{"hold_id": str(uuid.uuid4()), "professional_id": p, "ends_at": now} for p in ids]

    async def defer(conn: Any, professional_id: str, until: datetime) -> None:
        deferred[professional_id] = until

    monkeypatch.setattr(repository, "lock_professionals_with_due_holds", lock)
    monkeypatch.setattr(repository, "expire_holds", expire)
    monkeypatch.setattr(repository, "defer_hold_expiry", defer)
    job = replace(scheduler.hold_expiry(scheduler.ScoringSettings()), batch_size=2)
    db, name = FakeDb(), service()

    first = await background.run_round(job, pool=FakePool(db), service=name, deps=None, clock=lambda: START)
    # the batch's statement fails, so one professional at a time: pro-bad fails alone and is deferred
    assert lifts == [["pro-a", "pro-bad"], ["pro-a"], ["pro-bad"]]
    assert (first.handled, first.failed) == (1, 1) and deferred == {"pro-bad": START + scheduler.FAILED_RETRY}
    assert db.effects == [("lifted", ("pro-a",))] and db.events == [("hold.lifted", "pro-a")]

    lifts.clear()
    second = await background.run_round(job, pool=FakePool(db), service=name, deps=None, clock=lambda: START)
    assert lifts == [["pro-c"]] and (second.claimed, second.handled) == (1, 1)  # not blocked by pro-bad

    due.update({"pro-d", "pro-e"})
    lifts.clear()
    third = await background.run_round(job, pool=FakePool(db), service=name, deps=None, clock=lambda: START)
    assert lifts == [["pro-d", "pro-e"]] and third.handled == 2  # a healthy batch: one statement
    assert db.events[-2:] == [("hold.lifted", "pro-d"), ("hold.lifted", "pro-e")]


# --- the loop: pacing, backoff, stopping -------------------------------------------------------


async def test_full_batches_follow_at_once_and_a_short_one_waits_a_jittered_interval() -> None:
    db = FakeDb()
    host = FakeHost(FakePool(db), service())
    clock = Clock(host, sleeps=2)
    table = Table({f"r{i:02}": START for i in range(25)}, marks=True)
    job = DueWork(name="pace", claim=table.claim, act=act, interval_seconds=10, batch_size=10)

    await background.run(job, host, clock=clock, sleep=clock.sleep, rng=lambda: 0.0)

    # 10 + 10 at once, 5 then a wait, an empty round then a wait: stopped
    assert [limit for _, limit in table.claims] == [10, 10, 10, 10]
    assert [now for now, _ in table.claims[:3]] == [START] * 3
    assert clock.slept == [8.0, 8.0]  # rng 0: the shortest poll, 80 % of the interval
    assert len(table.done) == 25 and host.woken == 3


async def test_the_interval_is_never_longer_than_configured() -> None:
    job = DueWork(name="x", claim=Table({}).claim, interval_seconds=30, batch_size=1)
    waits = [background.pause(job, START, rng=lambda r=r: r) for r in (0.0, 0.5, 0.999)]
    assert waits[0] == 24.0 and 24.0 < waits[1] < waits[2] <= 30.0


async def test_a_job_due_by_the_clock_wakes_when_it_falls_due() -> None:
    job = DueWork(name="nightly", claim=Table({}).claim, interval_seconds=300, batch_size=1, next_due=lambda now: 12.5)
    assert background.pause(job, START, rng=lambda: 1.0) == 12.5
    assert background.pause(job, START, rng=lambda: 0.0) == 12.5
    late = DueWork(
        name="nightly", claim=Table({}).claim, interval_seconds=300, batch_size=1, next_due=lambda now: 9999.0
    )
    assert background.pause(late, START, rng=lambda: 1.0) == 300.0


async def test_a_full_batch_of_failing_rows_waits_instead_of_spinning() -> None:
    db = FakeDb()
    host = FakeHost(FakePool(db), service())
    clock = Clock(host, sleeps=3)

    async def always(unit: WorkUnit[Any], row: str) -> None:
        raise ValueError("never works")

    table = Table({"a": START, "b": START})  # a bare lock: failing rows come back
    job = DueWork(name="stuck", claim=table.claim, act=always, interval_seconds=5, batch_size=2)
    await background.run(job, host, clock=clock, sleep=clock.sleep, rng=lambda: 1.0)
    assert len(table.claims) == 3 and clock.slept == [5.0, 5.0, 5.0]
    assert counted(host.name, "stuck", "failed") == 6


async def test_transient_faults_back_off_with_jitter_and_the_round_is_tried_again() -> None:
    db = FakeDb()
    host = FakeHost(FakePool(db), service())
    clock = Clock(host, sleeps=5)
    failures = iter([OSError("database unreachable")] * 3)

    async def flaky_claim(conn: asyncpg.Connection, now: datetime, limit: int) -> list[str]:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return ["a"] if not db.effects else []

    job = DueWork(name="flaky", claim=flaky_claim, act=act, interval_seconds=5, batch_size=10)
    await background.run(job, host, clock=clock, sleep=clock.sleep, rng=lambda: 1.0)

    assert clock.slept[:3] == [0.5, 1.0, 2.0]  # exponential (rng 1: the nominal delays)
    assert db.effects == [("acted", "a")] and host.woken == 1
    retried = REGISTRY.get_sample_value(
        "cancellations_background_retries_total", {"service": host.name, "job": "flaky"}
    )
    assert retried == 3


async def test_the_backoff_after_faults_is_capped() -> None:
    host = FakeHost(FakePool(FakeDb()), service())
    clock = Clock(host, sleeps=12)

    async def down(conn: asyncpg.Connection, now: datetime, limit: int) -> list[str]:
        raise TimeoutError()

    await background.run(
        DueWork(name="down", claim=down, interval_seconds=5, batch_size=1),
        host,
        clock=clock,
        sleep=clock.sleep,
        rng=lambda: 1.0,
    )
    assert max(clock.slept) == background.RETRY_CAP_SECONDS


async def test_the_loop_stops_when_the_runtime_stops_and_waits_its_first_delay() -> None:
    host = FakeHost(FakePool(FakeDb()), service(), stopping=False)
    clock = Clock(host, sleeps=1)
    table = Table({"a": START})
    job = DueWork(name="x", claim=table.claim, act=act, interval_seconds=5, batch_size=1, first_delay_seconds=30)
    await background.run(job, host, clock=clock, sleep=clock.sleep, rng=lambda: 0.0)
    assert clock.slept == [15.0] and table.claims == []  # stopped during its first delay: no round

    host.stopping = True
    await asyncio.wait_for(replace(job, first_delay_seconds=0)(host), timeout=1)  # stopped: returns at once
    assert table.claims == []


def test_a_job_is_a_background_task_named_after_it() -> None:
    job = DueWork(name="expire_offers", claim=Table({}).claim, interval_seconds=5, batch_size=1)
    assert job.__name__ == "expire_offers" and callable(job)


# --- DueCall: claim, call outside, record ------------------------------------------------------


@dataclass
class Provider:
    """A provider outside our database: remembers every call and whether a transaction was open."""

    db: FakeDb
    answers: dict[str, str | None] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    inside_transaction: list[bool] = field(default_factory=list)
    claimed_before_call: list[bool] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    delay: float = 0.0

    async def call(self, deps: Any, row: str) -> str | None:
        self.calls.append(row)
        self.inside_transaction.append(self.db.open > 0)
        self.claimed_before_call.append(("claimed", row) in self.db.effects)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return self.answers.get(row, "ok")


async def record(unit: WorkUnit[Any], row: str, outcome: str) -> None:
    unit.conn.effect(("recorded", row, outcome))  # type: ignore[attr-defined]
    unit.emit(SCORING_EVENTS, lifted(row), subject=f"pro-{row}")


async def test_a_call_runs_between_two_transactions_and_its_outcome_commits_with_its_event() -> None:
    db, name = FakeDb(), service()
    provider = Provider(db, answers={"unknown": None})
    table = Table({"a": START, "unknown": START}, marks=True)
    job = DueCall(name="send", claim=table.claim, call=provider.call, record=record, interval_seconds=1, batch_size=10)
    woken: list[bool] = []

    done = await background.run_round(
        job, pool=FakePool(db), service=name, deps=None, on_committed=lambda: woken.append(True), clock=lambda: START
    )

    assert provider.inside_transaction == [False, False]  # never inside a transaction
    assert provider.claimed_before_call == [True, True]  # the claim (and its lease) committed first
    assert (done.claimed, done.handled, done.deferred) == (2, 1, 1)
    assert db.effects == [("claimed", "a"), ("claimed", "unknown"), ("recorded", "a", "ok")]
    assert db.events == [("hold.lifted", "pro-a")] and woken == [True]
    assert counted(name, "send", "deferred") == 1


async def test_recording_is_retried_while_the_database_is_down() -> None:
    db = FakeDb()
    provider = Provider(db)
    down = iter([ConnectionRefusedError()] * 2)
    slept: list[float] = []

    async def record_when_up(unit: WorkUnit[Any], row: str, outcome: str) -> None:
        exc = next(down, None)
        if exc is not None:
            raise exc
        await record(unit, row, outcome)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    job = DueCall(
        name="send",
        claim=Table({"a": START}, marks=True).claim,
        call=provider.call,
        record=record_when_up,
        interval_seconds=1,
        batch_size=10,
    )
    done = await background.run_round(
        job, pool=FakePool(db), service=service(), deps=None, clock=lambda: START, sleep=sleep
    )
    assert done.handled == 1 and provider.calls == ["a"]  # called once, recorded on the third try
    assert len(slept) == 2 and db.effects[-1] == ("recorded", "a", "ok")


async def test_an_outcome_that_cannot_be_recorded_is_left_to_the_lease() -> None:
    db, name = FakeDb(), service()
    provider = Provider(db)

    async def refuses(unit: WorkUnit[Any], row: str, outcome: str) -> None:
        await record(unit, row, outcome)
        raise ValueError("cannot be stored")

    async def no_sleep(seconds: float) -> None:
        return None

    job = DueCall(
        name="send",
        claim=Table({"a": START, "b": START}, marks=True).claim,
        call=provider.call,
        record=refuses,
        interval_seconds=1,
        batch_size=10,
    )
    done = await background.run_round(
        job, pool=FakePool(db), service=name, deps=None, clock=lambda: START, sleep=no_sleep
    )
    assert (done.handled, done.failed) == (0, 2)
    assert db.effects == [("claimed", "a"), ("claimed", "b")] and db.events == []
    assert counted(name, "send", "failed") == 2


async def test_calls_run_at_most_concurrency_at_once() -> None:
    db = FakeDb()
    provider = Provider(db, delay=0.01)
    rows = {f"r{i}": START for i in range(6)}
    one_by_one = DueCall(
        name="charge",
        claim=Table(rows, marks=True).claim,
        call=provider.call,
        record=record,
        interval_seconds=1,
        batch_size=10,
    )
    await background.run_round(one_by_one, pool=FakePool(db), service=service(), deps=None, clock=lambda: START)
    assert provider.most_in_flight == 1

    provider = Provider(db, delay=0.01)
    together = DueCall(
        name="send",
        claim=Table(rows, marks=True).claim,
        call=provider.call,
        record=record,
        interval_seconds=1,
        batch_size=10,
        concurrency=3,
    )
    await background.run_round(together, pool=FakePool(db), service=service(), deps=None, clock=lambda: START)
    assert provider.most_in_flight == 3


async def test_at_shutdown_calls_in_flight_finish_and_are_recorded() -> None:
    db = FakeDb()
    provider = Provider(db, delay=0.2)
    job = DueCall(
        name="send",
        claim=Table({"a": START, "b": START}, marks=True).claim,
        call=provider.call,
        record=record,
        interval_seconds=1,
        batch_size=10,
        concurrency=10,
        drain_seconds=5,
    )
    host = FakeHost(FakePool(db), service())
    task = asyncio.create_task(job(host))
    while provider.in_flight < 2:
        await asyncio.sleep(0.01)
    host.stopping = True
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [e for e in db.effects if e[0] == "recorded"] == [("recorded", "a", "ok"), ("recorded", "b", "ok")]


async def test_without_a_drain_a_stop_cuts_the_calls_off_and_the_lease_brings_them_back() -> None:
    db = FakeDb()
    provider = Provider(db, delay=5.0)
    job = DueCall(
        name="charge",
        claim=Table({"a": START}, marks=True).claim,
        call=provider.call,
        record=record,
        interval_seconds=1,
        batch_size=10,
    )
    host = FakeHost(FakePool(db), service())
    task = asyncio.create_task(job(host))
    while provider.in_flight < 1:
        await asyncio.sleep(0.01)
    host.stopping = True
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=1)
    assert db.effects == [("claimed", "a")]  # claimed and leased, nothing recorded


async def test_a_call_that_raises_is_a_failed_row_and_the_others_go_on() -> None:
    db, name = FakeDb(), service()
    marked: list[str] = []

    async def call(deps: Any, row: str) -> str:
        if row == "bad":
            raise ValueError("a key reused with other parameters")
        return "ok"

    async def mark(unit: WorkUnit[Any], row: str, error: Exception) -> None:
        marked.append(row)
        unit.conn.effect(("marked", row))  # type: ignore[attr-defined]

    job = DueCall(
        name="charge",
        claim=Table({"bad": START, "good": START}).claim,
        call=call,
        record=record,
        on_failure=mark,
        interval_seconds=1,
        batch_size=10,
    )
    done = await background.run_round(job, pool=FakePool(db), service=name, deps=None, clock=lambda: START)
    assert (done.handled, done.failed) == (1, 1) and marked == ["bad"]
    assert ("marked", "bad") in db.effects and ("recorded", "good", "ok") in db.effects


async def test_a_call_that_hits_a_transient_fault_is_deferred_to_its_lease() -> None:
    db = FakeDb()

    async def call(deps: Any, row: str) -> str:
        raise ConnectionResetError()

    job = DueCall(
        name="charge", claim=Table({"a": START}).claim, call=call, record=record, interval_seconds=1, batch_size=10
    )
    done = await background.run_round(job, pool=FakePool(db), service=service(), deps=None, clock=lambda: START)
    assert (done.deferred, done.failed) == (1, 0) and db.effects == []


async def test_the_call_gets_the_services_deps() -> None:
    got: list[Any] = []

    async def call(deps: Any, row: str) -> str:
        got.append(deps)
        return "ok"

    deps = object()
    job = DueCall(name="x", claim=Table({"a": START}).claim, call=call, record=record, interval_seconds=1, batch_size=1)
    await background.run_round(job, pool=FakePool(FakeDb()), service=service(), deps=deps, clock=lambda: START)
    assert got == [deps]


async def slow_record(unit: WorkUnit[Any], row: str, outcome: str) -> None:
    """A record that takes a moment, as a real statement does: outcomes arriving meanwhile wait."""
    await asyncio.sleep(0.01)
    await record(unit, row, outcome)


async def test_outcomes_that_arrive_while_one_is_recorded_are_recorded_together_in_one_transaction() -> None:
    db = FakeDb()
    rows = {f"r{i}": START for i in range(6)}
    job = DueCall(
        name="send",
        claim=Table(rows, marks=True).claim,
        call=Provider(db).call,
        record=slow_record,
        interval_seconds=1,
        batch_size=10,
        concurrency=6,
    )
    done = await background.run_round(job, pool=FakePool(db), service=service(), deps=None, clock=lambda: START)
    assert done.handled == 6
    assert sorted(e for e in db.effects if e[0] == "recorded") == [("recorded", r, "ok") for r in sorted(rows)]
    assert sorted(db.events) == sorted(("hold.lifted", f"pro-{r}") for r in rows)  # each row's own event, once
    # the claim, the first outcome alone, then the five that arrived meanwhile in one transaction
    assert db.commits == 3


async def test_one_call_at_a_time_records_each_outcome_alone() -> None:
    db = FakeDb()
    job = DueCall(
        name="charge",
        claim=Table({"a": START, "b": START}, marks=True).claim,
        call=Provider(db).call,
        record=record,
        interval_seconds=1,
        batch_size=10,
    )
    done = await background.run_round(job, pool=FakePool(db), service=service(), deps=None, clock=lambda: START)
    assert done.handled == 2 and db.commits == 3  # the claim, then one transaction per outcome


async def test_a_record_that_fails_for_good_fails_its_row_alone_and_the_group_keeps_its_effect() -> None:
    db, name = FakeDb(), service()

    async def refuses_b(unit: WorkUnit[Any], row: str, outcome: str) -> None:
        await slow_record(unit, row, outcome)
        if row == "b":
            raise ValueError("cannot be stored")

    job = DueCall(
        name="send",
        claim=Table({"a": START, "b": START, "c": START, "d": START}, marks=True).claim,
        call=Provider(db).call,
        record=refuses_b,
        interval_seconds=1,
        batch_size=10,
        concurrency=4,
    )
    done = await background.run_round(job, pool=FakePool(db), service=name, deps=None, clock=lambda: START)
    assert (done.handled, done.failed) == (3, 1)
    assert sorted(e for e in db.effects if e[0] == "recorded") == [("recorded", r, "ok") for r in "acd"]
    assert sorted(db.events) == [("hold.lifted", f"pro-{r}") for r in "acd"]
    assert counted(name, "send", "failed") == 1


async def test_a_job_woken_by_commits_runs_at_the_next_commit_not_at_the_end_of_its_interval() -> None:
    db = FakeDb()
    table = Table({"a": START}, marks=True)
    rounds: list[float] = []

    async def claim(conn: Any, now: datetime, limit: int) -> list[str]:
        rounds.append(time.monotonic())
        return await table.claim(conn, now, limit)

    job = DueWork(name="send", claim=claim, act=act, interval_seconds=60, batch_size=10, wake_on_commit=True)
    host = FakeHost(FakePool(db), service())
    task = asyncio.create_task(background.run(job, host))

    async def rounds_done(n: int) -> None:
        while len(rounds) < n:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(rounds_done(1), timeout=5)
    table.due["b"] = START  # the consumer commits a row the job will act on…
    host.committed.set()  # …and its commit wakes the job, long before its 60-second interval
    try:
        await asyncio.wait_for(rounds_done(2), timeout=5)
    finally:
        host.stopping = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert ("acted", "b") in db.effects


async def test_a_job_not_woken_by_commits_waits_its_interval() -> None:
    host = FakeHost(FakePool(FakeDb()), service())
    clock = Clock(host, sleeps=1)
    job = DueWork(name="x", claim=Table({}).claim, act=act, interval_seconds=7, batch_size=10)
    await background.run(job, host, clock=clock, sleep=clock.sleep, rng=lambda: 1.0)
    assert clock.slept == [7] and host.subscribed == 0


async def test_a_row_the_database_keeps_refusing_leaves_its_group_recorded_and_fails_alone() -> None:
    """A lock held elsewhere on one row's record, attempt after attempt: the rows recorded with
    it, whose calls were made, are recorded (their calls are not made again); only it fails."""
    db, name = FakeDb(), service()

    async def locked_b(unit: WorkUnit[Any], row: str, outcome: str) -> None:
        await slow_record(unit, row, outcome)
        if row == "b":
            raise ConnectionResetError()  # transient, every time

    async def no_sleep(seconds: float) -> None:
        return None

    job = DueCall(
        name="send",
        claim=Table({"a": START, "b": START, "c": START, "d": START}, marks=True).claim,
        call=Provider(db).call,
        record=locked_b,
        key=lambda row: row,
        interval_seconds=1,
        batch_size=10,
        concurrency=4,
    )
    done = await background.run_round(
        job, pool=FakePool(db), service=name, deps=None, clock=lambda: START, sleep=no_sleep
    )
    assert (done.handled, done.failed) == (3, 1)
    assert sorted(e for e in db.effects if e[0] == "recorded") == [("recorded", r, "ok") for r in "acd"]


async def test_a_group_is_recorded_in_the_order_of_its_keys() -> None:
    db = FakeDb()
    order: list[str] = []

    async def remember(unit: WorkUnit[Any], row: str, outcome: str) -> None:
        await asyncio.sleep(0.06)  # the others answer while the first is being recorded
        await record(unit, row, outcome)
        order.append(row)

    async def last_first(deps: Any, row: str) -> str:
        await asyncio.sleep({"a": 0.04, "b": 0.03, "c": 0.02, "d": 0.01}[row])  # d answers first, a last
        return "ok"

    job = DueCall(
        name="send",
        claim=Table({r: START for r in "abcd"}, marks=True).claim,
        call=last_first,
        record=remember,
        key=lambda row: row,
        interval_seconds=1,
        batch_size=10,
        concurrency=4,
    )
    await background.run_round(job, pool=FakePool(db), service=service(), deps=None, clock=lambda: START)
    assert order == ["d", "a", "b", "c"]  # the first answer alone, then the three that waited, by key

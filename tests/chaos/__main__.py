"""`make chaos`: under steady load, one fault at a time; afterwards every request must have
exactly its expected effects — nothing lost, nothing duplicated (no second charge, no second
email), per-booking order kept, dead-letter topics holding exactly the injected poison,
outboxes drained. Prints a table: fault → requests, lost, duplicated, out of order,
dead-lettered.

The last round, "hostile input" (tests/chaos/hostile.py, hostile_round.py), mixes some 870
inbound messages with one field at an edge value (overflowing times, huge numbers, 5000-deep
JSON, 700 KB strings, invalid UTF-8, wrong types, ...) into the load: each must be refused
(dead-lettered, or rejected as invalid) exactly once by every service consuming its topic, and
healthy messages published after them must still have their effects. Its columns: hostile
sent / refused / missing / duplicated; below the table, per class and per failing case, what
each service did. Run it alone with `--only hostile`; list its cases with
`python -m tests.chaos.hostile`.

Short form (default, fits CI): every fault once with a small load, then the hostile round.
`--long`: more load and every service killed, for the README's results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaProducer

from shared.kafka import client_args
from shared.topics import (
    BILLING_COMMANDS,
    BOOKING_EVENTS,
    PMS_SYNC_ACKS,
    SCORING_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
    UPSTREAM_PROFESSIONALS,
)
from tests.load import scenario as scenarios
from tests.load.checker import Collector, check, end_offsets, outbox_backlog
from tests.load.driver import Progress, prepare, send_reliably, send_requests, wait_complete
from tests.load.system import System

from .hostile_round import NAME as HOSTILE
from .hostile_round import consumer_map, hostile_round, report
from .poison import poison_messages

ROOT = Path(__file__).resolve().parents[2]
Fault = Callable[[System], Awaitable[None]]
# What the services consume from outside and from each other: dead letters of records published
# on these before a round started are a consumer catching up, not the round's doing.
INPUT_TOPICS = [
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
    UPSTREAM_PROFESSIONALS,
    BILLING_COMMANDS,
    PMS_SYNC_ACKS,
    BOOKING_EVENTS,
    SCORING_EVENTS,
]


def consumers_of(topic: str) -> int:
    """How many services consume `topic`: each dead-letters a poison message on it once."""
    return len(consumer_map().get(topic, []))


# --- the faults ----------------------------------------------------------------------------------


def kill(service: str) -> Fault:
    async def fault(system: System) -> None:
        proc = system.procs[service][0]
        proc.kill()  # SIGKILL: no shutdown hook, offsets not committed, relay mid-batch
        await asyncio.sleep(1.0)
        proc.port = 0
        await asyncio.to_thread(proc.start)

    fault.__name__ = f"SIGKILL {service}"
    return fault


def kill_with_backlog(service: str) -> Fault:
    """SIGKILL at the worst moment for the relay: while the outbox has committed, unpublished rows."""

    async def fault(system: System) -> None:
        schema = service.replace("-", "_")
        conn = await asyncpg.connect(system.admin_dsn)
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL"):
                    break
                await asyncio.sleep(0.005)
        finally:
            await conn.close()
        await kill(service)(system)

    fault.__name__ = f"SIGKILL {service} with outbox backlog"
    return fault


def zombie(service: str, seconds: float = 14.0) -> Fault:
    """SIGSTOP past the consumer session timeout (10 s): the group moves on without it, then it wakes."""

    async def fault(system: System) -> None:
        proc = system.procs[service][0]
        proc.signal(signal.SIGSTOP)
        await asyncio.sleep(seconds)
        proc.signal(signal.SIGCONT)

    fault.__name__ = f"SIGSTOP {service} {seconds:g}s"
    return fault


def scale(service: str) -> Fault:
    async def fault(system: System) -> None:
        for _ in range(2):
            await asyncio.to_thread(system.add_replica, service)
        await asyncio.sleep(4.0)
        for _ in range(2):
            await asyncio.to_thread(system.remove_replica, service)

    fault.__name__ = f"scale {service} 1→3→1"
    return fault


def restart_infra(what: str) -> Fault:
    async def fault(system: System) -> None:
        if os.environ.get("CANCELLATIONS_INFRA", "local") != "local":
            raise RuntimeError(f"{what} restart needs the local infrastructure (infra/{what}.sh)")
        script = str(ROOT / "infra" / f"{what}.sh")
        for action in ("stop", "start"):
            done = await asyncio.to_thread(subprocess.run, ["bash", script, action], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(
                    f"infra/{what}.sh {action} failed ({done.returncode}): {done.stdout[-800:]} {done.stderr[-800:]}"
                )
            if action == "stop":
                await asyncio.sleep(2.0)

    fault.__name__ = f"{'broker' if what == 'kafka' else 'database'} restart"
    return fault


async def no_fault(system: System) -> None:
    return None


no_fault.__name__ = "none (control)"


# --- one round: steady load, one fault in the middle, then the verdict -----------------------


async def round_(system: System, fault: Fault, *, stories: int, rate: float, poison: int, seed: int) -> dict:
    collector = Collector(system.bootstrap)
    await collector.start()
    since = await end_offsets(system.bootstrap, INPUT_TOPICS)
    scenario = scenarios.build(stories, seed=seed)
    bad = poison_messages(poison, seed=seed) if poison else []
    try:
        await prepare(system.bootstrap, system.admin_dsn, scenario)
        emails_before = {s.booking_id: len(system.mailbox.to(s.patient_email)) for s in scenario.stories}
        progress = Progress(f"{fault.__name__}: load", stories)
        sending = asyncio.create_task(send_requests(system.bootstrap, scenario, rate=rate, on_sent=progress.update))
        await asyncio.sleep(stories / rate / 3)
        fault_started = time.monotonic()
        await fault(system)
        fault_seconds = time.monotonic() - fault_started
        if bad:
            await _publish_raw(system.bootstrap, bad)
        sent = await sending
        await wait_complete(scenario, collector, timeout=240, label=f"{fault.__name__}: effects")
        await _drain(system.admin_dsn, timeout=60)
        await asyncio.sleep(3.0)  # a duplicate would arrive now
        verdict = check(scenario, collector, sent, bad, since, consumers=consumers_of(UPSTREAM_BOOKINGS))
        verdict.outbox_backlog = sum((await outbox_backlog(system.admin_dsn)).values())
        second_emails = sum(
            max(
                0,
                len(system.mailbox.to(s.patient_email)) - emails_before[s.booking_id] - s.expected["notification.sent"],
            )
            for s in scenario.stories
        )
        second_charges = await _second_charges(system.admin_dsn, [s.booking_id for s in scenario.stories])
    finally:
        await collector.stop()
    return {
        "fault": fault.__name__,
        "requests": verdict.requests,
        "complete": verdict.complete,
        "lost": verdict.lost,
        "duplicated": verdict.duplicated + second_emails + second_charges,
        "second_emails": second_emails,
        "second_charges": second_charges,
        "out_of_order": verdict.out_of_order,
        "unexpected": verdict.unexpected,
        "dead_lettered": f"{verdict.dead_lettered}/{verdict.poison_expected}",
        "outbox_backlog": verdict.outbox_backlog,
        "fault_seconds": round(fault_seconds, 1),
        "ok": verdict.ok and second_emails == 0 and second_charges == 0,
        "problems": verdict.problems[:10],
    }


async def _publish_raw(bootstrap: str, messages: list[bytes]) -> None:
    producer = AIOKafkaProducer(**client_args(bootstrap), acks="all")
    await producer.start()
    try:
        await send_reliably(
            producer, [(UPSTREAM_BOOKINGS, f"poison-{i}".encode(), raw) for i, raw in enumerate(messages)]
        )
    finally:
        await producer.stop()


async def _drain(admin_dsn: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sum((await outbox_backlog(admin_dsn)).values()):
                return
        except (OSError, asyncpg.PostgresError):
            pass
        await asyncio.sleep(0.5)


async def _second_charges(admin_dsn: str, booking_ids: list[str]) -> int:
    """Card payments beyond one per charge, as the gateway recorded them."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        return await conn.fetchval(
            "SELECT coalesce(sum(n - 1), 0)::int FROM (SELECT count(*) AS n FROM billing.payments p"
            " JOIN billing.charges c ON c.charge_id = p.charge_id WHERE c.booking_id = ANY($1)"
            " AND p.status = 'captured' GROUP BY p.charge_id) per_charge",
            booking_ids,
        )
    finally:
        await conn.close()


def faults(long: bool) -> list[Fault]:
    killed = (
        ["booking", "cancellation-policy", "scoring", "billing", "notification", "pms-sync"]
        if long
        else ["booking", "billing", "notification"]
    )
    return [
        no_fault,
        *(kill(s) for s in killed),
        kill_with_backlog("booking"),
        zombie("billing"),
        scale("booking"),
        restart_infra("kafka"),
        restart_infra("postgres"),
    ]


def _table(rows: list[dict]) -> str:
    cols = [
        "fault",
        "requests",
        "lost",
        "duplicated",
        "out_of_order",
        "dead_lettered",
        "outbox_backlog",
        "hostile_sent",
        "hostile_refused",
        "hostile_missing",
        "hostile_duplicated",
        "ok",
    ]
    widths = {c: max(len(c), *(len(str(r.get(c, "-"))) for r in rows)) for c in cols}
    line = " | ".join(c.ljust(widths[c]) for c in cols)
    sep = "-+-".join("-" * widths[c] for c in cols)
    return "\n".join([line, sep, *(" | ".join(str(r.get(c, "-")).ljust(widths[c]) for c in cols) for r in rows)])


async def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    system = System.from_environment(out / f"chaos-logs-{stamp}").start()
    rows = []
    try:
        wanted = [o.strip() for o in args.only.split(",") if o.strip()]
        chosen = [f for f in faults(args.long) if not wanted or any(o in f.__name__ for o in wanted)]
        for i, fault in enumerate(chosen):
            poison = args.poison if fault is no_fault or args.long else (args.poison if i == 1 else 0)
            rows.append(await round_(system, fault, stories=args.stories, rate=args.rate, poison=poison, seed=100 + i))
            row = rows[-1]
            counters = {
                k: row[k]
                for k in (
                    "lost",
                    "duplicated",
                    "second_emails",
                    "second_charges",
                    "out_of_order",
                    "unexpected",
                    "dead_lettered",
                    "outbox_backlog",
                )
            }
            print(
                f"{row['fault']}: {'ok' if row['ok'] else 'PROBLEMS'} {'' if row['ok'] else (counters, row['problems'])}",
                flush=True,
            )
        if not wanted or any(o in HOSTILE for o in wanted):
            try:
                rows.append(
                    await hostile_round(
                        system, stories=args.stories, rate=args.rate, seed=100 + len(chosen), input_topics=INPUT_TOPICS
                    )
                )
            except Exception as exc:
                rows.append(
                    {
                        "fault": HOSTILE,
                        "ok": False,
                        "problems": [f"{type(exc).__name__}: {exc}"],
                        "hostile_sent": 0,
                        "hostile_refused": 0,
                        "hostile_missing": 0,
                        "hostile_duplicated": 0,
                        "kept_consuming": "-",
                    }
                )
            row = rows[-1]
            print(
                f"{row['fault']}: {'ok' if row['ok'] else 'PROBLEMS'} (hostile: {row['hostile_sent']} sent,"
                f" {row['hostile_refused']} refused, {row['hostile_missing']} missing, {row['hostile_duplicated']}"
                f" duplicated; kept consuming: {row['kept_consuming']}; healthy problems: {row['problems']})",
                flush=True,
            )
    finally:
        system.stop()
    print("\n== chaos ==")
    print(_table(rows))
    for row in rows:
        if "hostile" in row:
            print(report(row))
        elif row["fault"] == HOSTILE:
            print(f"\n== {HOSTILE}: the round could not run: {row['problems'][0]} ==")
    path = out / f"chaos-{stamp}.json"
    path.write_text(json.dumps(rows, indent=2))
    print(f"written: {path}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="make chaos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--long", action="store_true", help="more load, every service killed")
    parser.add_argument("--stories", type=int, default=None)
    parser.add_argument("--rate", type=float, default=None, help="requests per second during a round")
    parser.add_argument("--poison", type=int, default=20, help="poison and fuzzed messages mixed in")
    parser.add_argument(
        "--only", default="", help="comma-separated parts of round names to run, e.g. 'SIGKILL,control' or 'hostile'"
    )
    parser.add_argument("--out", default="bench-results")
    ns = parser.parse_args()
    ns.stories = ns.stories or (600 if ns.long else 60)
    ns.rate = ns.rate or (20.0 if ns.long else 6.0)
    sys.exit(asyncio.run(main(ns)))

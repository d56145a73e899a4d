"""What the delivery-guarantee tests need beyond shared.testing: upstream events to publish,
admin queries, service metrics, consumer-group surgery and database faults.

Everything here talks to the real broker and the real database; nothing reaches into a
service's code. Each helper says what must stay true for the tests that lean on it.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from shared.kafka import client_args
from shared.testing import ServiceProcess, group_state, iso

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# --- upstream events --------------------------------------------------------------------------


def scheduled(booking_id: str, starts_at: datetime, *, practice_id: str) -> dict[str, Any]:
    """A `booking.scheduled` payload with every field the contract requires."""
    return {
        "booking_id": booking_id,
        "practice_id": practice_id,
        "starts_at": iso(starts_at),
        "ends_at": iso(starts_at + timedelta(minutes=30)),
        "practitioner_id": "practitioner-1",
        "service_code": "checkup",
        "patient": {
            "patient_id": f"patient-{booking_id}",
            "first_name": "Ada",
            "portal_account": True,
            "card_on_file": False,
        },
    }


def rescheduled(booking_id: str, starts_at: datetime) -> dict[str, Any]:
    return {"booking_id": booking_id, "starts_at": iso(starts_at), "ends_at": iso(starts_at + timedelta(minutes=30))}


def cancellation_requested(booking_id: str, request_id: str) -> dict[str, Any]:
    """A staff cancellation well before the start: every policy allows it (timely, no fee)."""
    return {
        "request_id": request_id,
        "booking_id": booking_id,
        "requested_at": iso(datetime.now(UTC)),
        "actor": {"kind": "staff", "id": "staff-1", "roles": ["front_desk"]},
        "channel": "practice",
    }


def future(days: int = 10) -> datetime:
    """A start time far enough ahead that no cutoff or late window applies, to the second."""
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


# --- waiting ----------------------------------------------------------------------------------


async def eventually(
    probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], *, timeout: float, what: str, every: float = 0.2
) -> T:
    """Poll `probe` until `ok(result)`; AssertionError naming `what` and the last result otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if ok(result):
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout}s; last seen {result!r}"[:2000])
        await asyncio.sleep(every)


# --- the database, as the admin ---------------------------------------------------------------


async def admin_fetch(admin_dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """One query on a fresh admin connection (survives a database restart between calls)."""
    conn = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def admin_val(admin_dsn: str, sql: str, *args: Any) -> Any:
    rows = await admin_fetch(admin_dsn, sql, *args)
    return rows[0][0] if rows else None


async def audit_actions(admin_dsn: str, booking_ids: Sequence[str]) -> dict[str, list[str]]:
    """booking_id -> its audit trail's actions, in the order they were recorded."""
    rows = await admin_fetch(
        admin_dsn,
        "SELECT booking_id, action FROM booking.audit_trail WHERE booking_id = ANY($1::text[]) ORDER BY seq",
        list(booking_ids),
    )
    trail: dict[str, list[str]] = {b: [] for b in booking_ids}
    for row in rows:
        trail[row["booking_id"]].append(row["action"])
    return trail


# --- services ---------------------------------------------------------------------------------


async def start(proc: ServiceProcess) -> ServiceProcess:
    """Start a service process and wait until ready, without blocking the event loop."""
    return await asyncio.to_thread(proc.start)


async def stop(proc: ServiceProcess) -> None:
    await asyncio.to_thread(proc.stop)


_SAMPLE = re.compile(r"^(?P<name>\w+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")


async def metric_samples(proc: ServiceProcess, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of the metric `name` on that process's /metrics, with its labels."""
    text = await asyncio.to_thread(_get_text, proc, "/metrics")
    samples = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m["name"] == name:
            samples.append((dict(re.findall(r'(\w+)="([^"]*)"', m["labels"])), float(m["value"])))
    return samples


async def message_counts(proc: ServiceProcess) -> dict[tuple[str, str], float]:
    """(topic, outcome) -> cancellations_messages_total of that process (processed, duplicate, ...)."""
    return {
        (labels["topic"], labels["outcome"]): value
        for labels, value in await metric_samples(proc, "cancellations_messages_total")
    }


async def transient_retries(proc: ServiceProcess) -> float:
    """How many batches that process rolled back and retried after a transient fault."""
    return sum(value for _, value in await metric_samples(proc, "cancellations_transient_retries_total"))


def _get_text(proc: ServiceProcess, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}{path}", timeout=5) as r:
        return r.read().decode()


# --- the consumer group -----------------------------------------------------------------------


async def wait_group(bootstrap: str, group: str, *, members: int, timeout: float = 60.0) -> None:
    """Until the group is Stable with at least `members` members (or Empty when members == 0).

    Publishing after this means no rebalance is pending that could make a test's timing odd.
    """
    want = (
        (lambda s: s[0] == "Empty" or s == ("Dead", 0))
        if members == 0
        else (lambda s: s[0] == "Stable" and s[1] >= members)
    )
    await eventually(
        lambda: group_state(bootstrap, group),
        want,
        timeout=timeout,
        every=0.3,
        what=f"consumer group {group!r} with {members} member(s)"
        + (" (another process of this service is running in the group?)" if members == 0 else ""),
    )


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    """The next offset of every partition of `topic`: where a message published now will go."""
    consumer = AIOKafkaConsumer(**client_args(bootstrap), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


async def rewind_group(bootstrap: str, group: str, to: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Set the group's committed offsets back to `to` (never forward); returns what was changed.

    This is the state a consumer leaves when it dies after its database commit and before its
    offset commit: the effects are in Postgres, Kafka will deliver the records again. The group
    must be empty (the broker refuses a commit from outside an active generation).
    """
    consumer = AIOKafkaConsumer(**client_args(bootstrap), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(to))
        changed: dict[TopicPartition, int] = {}
        for tp, offset in to.items():
            committed = await consumer.committed(tp)
            if committed is None or committed > offset:
                changed[tp] = offset
        if changed:
            await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in changed.items()})
        return changed
    finally:
        await consumer.stop()


# --- database faults --------------------------------------------------------------------------


def postgres_is_local() -> bool:
    """True when the database is the project's own server, which infra/postgres.sh may restart."""
    if os.environ.get("CANCELLATIONS_INFRA") != "local":
        return False
    status = subprocess.run(
        ["bash", str(ROOT / "infra" / "postgres.sh"), "status"], capture_output=True, text=True, timeout=30
    )
    return status.returncode == 0 and "running (" in status.stdout


async def postgres(action: str) -> None:
    """`bash infra/postgres.sh stop|start`, off the event loop."""
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(ROOT / "infra" / "postgres.sh"),
        action,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"infra/postgres.sh {action} failed ({proc.returncode}): {out.decode()[-2000:]}")


async def sever_connections(admin_dsn: str, role: str, seconds: float) -> int:
    """Terminate every backend of `role` again and again for `seconds`: a real loss of the
    database for that service, without touching anyone else's. Returns how many were cut."""
    cut = 0
    deadline = time.monotonic() + seconds
    conn = await asyncpg.connect(admin_dsn)
    try:
        while time.monotonic() < deadline:
            cut += await conn.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1",
                role,
            )
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    return cut

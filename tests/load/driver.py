"""Publishes a scenario's traffic to the real broker: the practices and bookings first (and
waits until every service that needs them has them), then the requests, as fast as possible or
at a fixed offered rate, remembering when each request was sent."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.kafka import client_args

from .checker import Collector, is_complete
from .scenario import Scenario
from .system import wait_until


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self._shown = label, total, 0, -1.0
        self.started = time.monotonic()

    def update(self, done: int) -> None:
        self.done = done
        if not sys.stderr.isatty() and done < self.total and time.monotonic() - self._shown < 5:
            return
        self._shown = time.monotonic()
        width = 30
        filled = int(width * done / max(1, self.total))
        rate = done / max(1e-6, time.monotonic() - self.started)
        end = "\n" if done >= self.total else ""
        sys.stderr.write(
            f"\r{self.label:<28} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} {rate:7.1f}/s{end}"
        )
        sys.stderr.flush()


async def send_reliably(
    producer: AIOKafkaProducer, messages: list[tuple[str, bytes, bytes]], timeout: float = 180
) -> None:
    """Publish (topic, key, value) messages and wait for the broker's acknowledgement, sending
    again what failed (a broker restart) as an upstream publisher would: a message sent twice
    carries the same envelope id, which every consumer de-duplicates. (The producers here are
    not idempotent on purpose: an idempotent one can lose its sequence over a broker restart.)"""
    deadline = time.monotonic() + timeout
    remaining = list(messages)
    while remaining:
        futures = []
        for topic, key, value in remaining:
            try:
                futures.append(await producer.send(topic, value, key=key))
            except KafkaError as exc:
                futures.append(exc)
        results = [f if isinstance(f, Exception) else None for f in futures]
        pending = [(i, f) for i, f in enumerate(futures) if not isinstance(f, Exception)]
        done = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
        for (i, _), outcome in zip(pending, done, strict=False):
            results[i] = outcome if isinstance(outcome, Exception) else None
        remaining = [m for m, r in zip(remaining, results, strict=False) if r is not None]
        if remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(remaining)} message(s) not accepted by the broker in {timeout}s")
            await asyncio.sleep(1.0)


async def _send_all(producer: AIOKafkaProducer, messages: list[tuple[str, str, dict[str, Any]]]) -> None:
    await send_reliably(producer, [(topic, key.encode(), json.dumps(env).encode()) for topic, key, env in messages])


async def _count(admin_dsn: str, query: str, ids: list[str]) -> int:
    conn = await asyncpg.connect(admin_dsn)
    try:
        return await conn.fetchval(query, ids)
    finally:
        await conn.close()


async def prepare(bootstrap: str, admin_dsn: str, scenario: Scenario, timeout: float = 300) -> None:
    """Practices and bookings in place in every service that needs them, before any request."""
    producer = AIOKafkaProducer(**client_args(bootstrap), acks="all", linger_ms=5)
    await producer.start()
    try:
        await _send_all(producer, scenario.setup_messages())
        practices = [p.practice_id for p in scenario.practices]
        for query in (
            "SELECT count(DISTINCT practice_id) FROM cancellation_policy.practice_settings WHERE practice_id = ANY($1)",
            "SELECT count(*) FROM pms_sync.integrations WHERE practice_id = ANY($1)",
            "SELECT count(*) FROM notification.practices WHERE practice_id = ANY($1)",
        ):

            async def ready(q=query) -> bool:
                return await _count(admin_dsn, q, practices) == len(practices)

            if not await wait_until(ready, timeout):
                raise TimeoutError(f"practices not configured in time: {query}")
        progress = Progress("scheduling bookings", len(scenario.stories))
        schedule = scenario.schedule_messages()
        for i in range(0, len(schedule), 500):
            await _send_all(producer, schedule[i : i + 500])
        ids = [s.booking_id for s in scenario.stories]

        async def scheduled() -> bool:
            booked = await _count(admin_dsn, "SELECT count(*) FROM booking.bookings WHERE booking_id = ANY($1)", ids)
            progress.update(booked)
            return booked == len(ids)

        if not await wait_until(scheduled, timeout, interval=0.5):
            raise TimeoutError("bookings not scheduled in time")

        async def contacts() -> bool:
            return await _count(
                admin_dsn, "SELECT count(*) FROM notification.patients WHERE booking_id = ANY($1)", ids
            ) == len(ids)

        if not await wait_until(contacts, timeout, interval=0.5):
            raise TimeoutError("patient contacts not recorded in time")
    finally:
        await producer.stop()


async def send_requests(
    bootstrap: str, scenario: Scenario, *, rate: float | None, on_sent: Callable[[int], None] | None = None
) -> dict[str, float]:
    """Publish every story's requests (in story order, each story's own messages in order), at
    `rate` stories per second or as fast as possible; returns envelope id -> send time (ms)."""
    producer = AIOKafkaProducer(**client_args(bootstrap), acks="all", linger_ms=2)
    await producer.start()
    sent_at: dict[str, float] = {}
    try:
        started = time.monotonic()
        batch: list[tuple[str, bytes, bytes]] = []
        for i, messages in enumerate(scenario.request_messages()):
            if rate:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            for topic, key, env in messages:
                sent_at[env["id"]] = time.time() * 1000
                batch.append((topic, key.encode(), json.dumps(env).encode()))
            if len(batch) >= 200 or rate:
                await send_reliably(producer, batch)
                batch = []
            if on_sent:
                on_sent(i + 1)
        await send_reliably(producer, batch)
    finally:
        await producer.stop()
    return sent_at


async def wait_complete(
    scenario: Scenario, collector: Collector, timeout: float, label: str = "waiting for effects"
) -> float:
    """Seconds until every story has all its effects (or the timeout)."""
    progress = Progress(label, len(scenario.stories))
    started = time.monotonic()
    remaining = list(scenario.stories)
    while remaining and time.monotonic() - started < timeout:
        remaining = [s for s in remaining if not is_complete(s, collector.by_key.get(s.booking_id, []))]
        progress.update(len(scenario.stories) - len(remaining))
        await asyncio.sleep(0.2)
    if remaining:
        progress.update(len(scenario.stories) - len(remaining))
        sys.stderr.write("\n")
    return time.monotonic() - started

"""The database guards on the real server: every pooled connection carries the statement and
lock timeouts (and a statement past them is cancelled, as a transient error), migrations are
not bound by them, and the inbox prune deletes only claims older than the retention — in
batches, with replicas pruning at once, and from the service runtime's background task. And
billing, as a process, refuses to start in production without an explicit PAYMENT_GATEWAY.

Each test works in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from shared import background, db, inbox
from shared import service as service_module
from shared.consumer import is_transient
from shared.provision import migration_dsn
from shared.settings import ServiceSettings
from shared.testing import ServiceProcess

pytestmark = pytest.mark.integration


@pytest.fixture
async def schema(infra) -> AsyncIterator[str]:
    name = f"guards_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(infra.admin_dsn)
    try:
        await admin.execute(f"CREATE SCHEMA {name}")
        yield name
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        await admin.close()


@pytest.fixture
def no_service_migrations(tmp_path: Path) -> Path:
    path = tmp_path / "migrations"
    path.mkdir()
    return path


def settings_for(infra, schema: str, **kw: Any) -> ServiceSettings:
    return ServiceSettings(service_name="guards", database_url=infra.admin_dsn, database_schema=schema, **kw)


# --- timeouts -------------------------------------------------------------------------------------


async def test_every_pooled_connection_has_the_default_timeouts(infra, schema: str) -> None:
    pool = await service_module._connect_pool(settings_for(infra, schema, database_pool_size=3), "guards")
    try:
        conns = [await pool.acquire() for _ in range(3)]  # every connection of the pool, not just one
        try:
            for conn in conns:
                assert await conn.fetchval("SHOW statement_timeout") == "30s"
                assert await conn.fetchval("SHOW lock_timeout") == "10s"
        finally:
            for conn in conns:
                await pool.release(conn)
    finally:
        await pool.close()


async def test_a_statement_past_the_timeout_is_cancelled_as_a_transient_error(infra, schema: str) -> None:
    settings = settings_for(infra, schema, database_statement_timeout_ms=200, database_lock_timeout_ms=150)
    pool = await service_module._connect_pool(settings, "guards")
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW statement_timeout") == "200ms"
            assert await conn.fetchval("SHOW lock_timeout") == "150ms"
        started = time.monotonic()
        with pytest.raises(asyncpg.exceptions.QueryCanceledError, match="statement timeout") as caught:
            await pool.fetchval("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 3
        assert is_transient(caught.value)  # the consumer retries it; it does not dead-letter the record
        assert await pool.fetchval("SELECT 1") == 1  # the connection is still good
    finally:
        await pool.close()


async def test_a_lock_waited_on_past_the_timeout_is_given_up(infra, schema: str) -> None:
    pool = await service_module._connect_pool(settings_for(infra, schema, database_lock_timeout_ms=200), "guards")
    holder = await asyncpg.connect(infra.admin_dsn)
    try:
        await pool.execute("CREATE TABLE locked (id int)")
        async with holder.transaction():
            await holder.execute(f"LOCK TABLE {schema}.locked IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(asyncpg.exceptions.LockNotAvailableError) as caught:
                await pool.fetch("SELECT * FROM locked")
            assert time.monotonic() - started < 3
            assert is_transient(caught.value)
    finally:
        await holder.close()
        await pool.close()


async def test_migrations_are_not_bound_by_the_timeouts(infra, schema: str, tmp_path: Path) -> None:
    """A slow migration, and waiting for another replica's migrations, outlast both timeouts;
    the pool's connections have their timeouts again afterwards."""
    migrations = tmp_path / "slow"
    migrations.mkdir()
    (migrations / "0001_slow.sql").write_text("SELECT pg_sleep(0.6);\nCREATE TABLE slow (id int);\n")
    settings = settings_for(
        infra, schema, database_pool_size=1, database_statement_timeout_ms=150, database_lock_timeout_ms=150
    )
    pool = await service_module._connect_pool(settings, "guards")
    other_replica = await asyncpg.connect(infra.admin_dsn)
    try:
        lock_key = await other_replica.fetchval("SELECT hashtext($1)", f"{schema}.migrations")
        await other_replica.execute("SELECT pg_advisory_lock($1)", lock_key)
        migrating = asyncio.create_task(db.migrate(pool, schema, migrations))
        await asyncio.sleep(0.6)  # past the lock timeout: migrate() is still waiting, not failed
        assert not migrating.done()
        await other_replica.execute("SELECT pg_advisory_unlock($1)", lock_key)
        applied = await asyncio.wait_for(migrating, 30)
        assert "0001_slow.sql" in applied and "shared/0002_inbox_processed_at.sql" in applied
        async with pool.acquire() as conn:  # the pool's only connection: the one that migrated
            assert await conn.fetchval("SHOW statement_timeout") == "150ms"
            assert await conn.fetchval("SHOW lock_timeout") == "150ms"
            assert await conn.fetchval("SELECT to_regclass('slow') IS NOT NULL")
    finally:
        await other_replica.close()
        await pool.close()


# --- the inbox prune ------------------------------------------------------------------------------


async def _inbox_pool(infra, schema: str, no_service_migrations: Path, **kw: Any) -> asyncpg.Pool:
    pool = await service_module._connect_pool(settings_for(infra, schema, **kw), "guards")
    await db.migrate(pool, schema, no_service_migrations)
    return pool


async def _add_claims(pool: asyncpg.Pool, consumer: str, count: int, age_hours: float) -> None:
    await pool.execute(
        "INSERT INTO inbox (consumer, event_id, processed_at)"
        " SELECT $1, gen_random_uuid()::text, now() - $3::float8 * interval '1 hour' FROM generate_series(1, $2)",
        consumer,
        count,
        age_hours,
    )


async def test_the_inbox_has_an_index_on_processed_at_for_every_service_role(
    infra, no_service_migrations: Path
) -> None:
    """The shared migration runs as each service's migration role (it owns its inbox)."""
    pool = await db.create_pool(
        migration_dsn(infra.admin_dsn, "scoring"), "scoring", application_name="test-guards", max_size=1
    )
    try:
        await db.migrate(pool, "scoring", no_service_migrations)
        indexes = await pool.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'scoring' AND tablename = 'inbox'"
        )
        assert "inbox_processed_at" in {r["indexname"] for r in indexes}
    finally:
        await pool.close()


async def _prune(pool: asyncpg.Pool, *, batch_size: int) -> int:
    """The inbox-pruning job's rounds (as a replica runs them) until one deletes nothing."""
    job = service_module.inbox_pruning(
        ServiceSettings(service_name="guards", inbox_retention_hours=336, inbox_prune_batch_size=batch_size)
    )
    total = 0
    while (done := await background.run_round(job, pool=pool, service="guards", deps=None)).claimed:
        total += done.claimed
    return total


async def test_prune_deletes_only_claims_older_than_the_retention(
    infra, schema: str, no_service_migrations: Path
) -> None:
    pool = await _inbox_pool(infra, schema, no_service_migrations)
    try:
        await _add_claims(pool, "guards", 25, age_hours=400)  # past 14 days: pruned
        await _add_claims(pool, "other", 3, age_hours=337)  # just past: pruned
        await _add_claims(pool, "guards", 4, age_hours=335)  # just inside: kept
        await _add_claims(pool, "guards", 5, age_hours=0)  # fresh: kept
        assert await _prune(pool, batch_size=10) == 28  # three rounds
        left = await pool.fetch("SELECT processed_at > now() - interval '336 hours' AS young FROM inbox")
        assert len(left) == 9 and all(r["young"] for r in left)
        assert await _prune(pool, batch_size=10) == 0
        # A claim that survived still answers: a redelivery of it is recognised.
        event_id = await pool.fetchval("SELECT event_id FROM inbox WHERE consumer = 'guards' LIMIT 1")
        async with pool.acquire() as conn, conn.transaction():
            assert await inbox.claim(conn, "guards", event_id) is False
    finally:
        await pool.close()


async def test_replicas_pruning_at_once_delete_each_claim_once(infra, schema: str, no_service_migrations: Path) -> None:
    pool = await _inbox_pool(infra, schema, no_service_migrations, database_pool_size=4)
    try:
        await _add_claims(pool, "guards", 500, age_hours=24 * 30)
        await _add_claims(pool, "guards", 20, age_hours=1)
        pruned = await asyncio.gather(*(_prune(pool, batch_size=37) for _ in range(4)))
        assert sum(pruned) == 500
        assert await pool.fetchval("SELECT count(*) FROM inbox") == 20
    finally:
        await pool.close()


async def test_the_service_runtime_prunes_in_the_background_and_says_how_much(
    infra, schema: str, no_service_migrations: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = await _inbox_pool(infra, schema, no_service_migrations)
    logged: list[tuple[str, dict[str, Any]]] = []

    class Recorder:
        def info(self, event: str, **kw: Any) -> None:
            logged.append((event, kw))

        debug = warning = error = info

    monkeypatch.setattr(background, "log", Recorder())
    settings = settings_for(infra, schema, inbox_retention_hours=1, inbox_prune_interval_seconds=0.05)
    job = replace(service_module.inbox_pruning(settings), first_delay_seconds=0)  # no start delay
    service = SimpleNamespace(pool=pool, name="guards", deps=None, stopping=False, wake_relay=lambda: None)
    task = asyncio.create_task(job(service))
    try:
        await _add_claims(pool, "guards", 7, age_hours=2)
        await _add_claims(pool, "guards", 2, age_hours=0)
        deadline = time.monotonic() + 10
        while await pool.fetchval("SELECT count(*) FROM inbox") > 2:
            assert time.monotonic() < deadline, "the background prune did not run"
            await asyncio.sleep(0.05)
        await _add_claims(pool, "guards", 3, age_hours=5)  # the next round takes these
        while await pool.fetchval("SELECT count(*) FROM inbox") > 2:
            assert time.monotonic() < deadline, "the background prune ran only once"
            await asyncio.sleep(0.05)
    finally:
        service.stopping = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.close()
    counts = [kw["handled"] for event, kw in logged if event == "background round" and kw["job"] == "prune_inbox"]
    assert sum(counts) == 10 and set(counts) <= {7, 3, 10}


# --- billing outside development ------------------------------------------------------------------


def test_billing_in_production_without_a_gateway_is_refused_at_startup(
    infra, log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAYMENT_GATEWAY", raising=False)  # the harness sets sandbox for every other test
    process = ServiceProcess("billing", infra.bootstrap, infra.admin_dsn, log_dir, env={"ENVIRONMENT": "production"})
    try:
        with pytest.raises(RuntimeError, match="exited"):
            process.start(timeout=30)
        log = process.log_path.read_text()
        assert "PAYMENT_GATEWAY is not set, and ENVIRONMENT is not 'development'" in log
    finally:
        process.stop()


def test_billing_in_production_with_an_explicit_sandbox_starts(infra, log_dir: Path) -> None:
    process = ServiceProcess(
        "billing",
        infra.bootstrap,
        infra.admin_dsn,
        log_dir,
        env={"ENVIRONMENT": "production", "PAYMENT_GATEWAY": "sandbox"},
    )
    try:
        process.start(timeout=60)
        assert process.get_json("/readyz")["ready"] is True
    finally:
        process.stop()

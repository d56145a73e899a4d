"""The service's Postgres pool, bound to its own schema, and the migration runner.

Guarantees: every connection of the pool has `search_path` set to the service's schema only,
so an unqualified name can never reach another service's tables; every connection has a
`statement_timeout` and a `lock_timeout` (DATABASE_STATEMENT_TIMEOUT_MS, DATABASE_LOCK_TIMEOUT_MS),
so a runaway query or a lock held by a stuck transaction cannot hold a connection forever;
migrations (plain SQL files, applied in name order) run once each, in a transaction each,
under an advisory lock, so several replicas starting together apply them exactly once — and
without either timeout, since a migration (or waiting for another replica's) may take long.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .logging import get_logger

log = get_logger(__name__)

# What a transaction runs on: a connection of its own, or one lent by the pool.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"


# The defaults of ServiceSettings.database_statement_timeout_ms / database_lock_timeout_ms.
DEFAULT_STATEMENT_TIMEOUT_MS = 30_000
DEFAULT_LOCK_TIMEOUT_MS = 10_000


def columns(rows: Sequence[Mapping[str, Any]], *names: str) -> list[list[Any]]:
    """`rows` as one list per named column, in row order: the arrays of an
    `INSERT … SELECT … FROM unnest($1::text[], $2::int[], …)`, so a set of rows is written with
    one statement (`*columns(rows, "a", "b")` as the statement's arguments)."""
    return [[row[name] for row in rows] for name in names]


async def create_pool(
    dsn: str,
    schema: str,
    *,
    application_name: str,
    max_size: int = 10,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    sslmode: str | None = None,
) -> asyncpg.Pool:
    """The pool; `statement_timeout_ms` / `lock_timeout_ms` of 0 mean no limit.

    `sslmode` is asyncpg's `ssl` (DATABASE_SSLMODE); unset, the DSN's own `sslmode` applies.
    The timeouts are session defaults (sent when connecting), so a `SET LOCAL` can lift them
    for one transaction and the pool's reset on release restores them.
    """
    extra: dict[str, Any] = {"ssl": sslmode} if sslmode else {}
    return await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        server_settings={
            "search_path": schema,
            "application_name": application_name,
            "statement_timeout": str(int(statement_timeout_ms)),
            "lock_timeout": str(int(lock_timeout_ms)),
        },
        # The pool survives a database restart: a broken connection is replaced, not reused.
        max_inactive_connection_lifetime=60,
        **extra,
    )


def _migration_files(service_dir: Path) -> list[tuple[str, Path]]:
    files = [(f"shared/{p.name}", p) for p in sorted(SHARED_MIGRATIONS.glob("*.sql"))]
    files += [(p.name, p) for p in sorted(service_dir.glob("*.sql"))]
    return files


async def migrate(pool: asyncpg.Pool, schema: str, service_dir: Path) -> list[str]:
    """Apply the shared and the service's migrations not applied yet; returns their names.

    The schema itself and the role that owns it are created by provisioning (shared.provision).
    """
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        # No timeouts while migrating: waiting for another replica's migrations, or one that
        # rewrites a big table, may take longer than any statement should in normal running.
        # Session-level, undone below (and by the pool's reset when the connection goes back).
        await conn.execute("SET statement_timeout = 0; SET lock_timeout = 0")
        lock_key = await conn.fetchval("SELECT hashtext($1)", f"{schema}.migrations")
        await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for name, path in _migration_files(service_dir):
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                applied_now.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
            await conn.execute("RESET statement_timeout; RESET lock_timeout")
    if applied_now:
        log.info("migrations applied", schema=schema, migrations=applied_now)
    return applied_now

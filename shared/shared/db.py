"""The service's Postgres pool, bound to its own schema, and the migration runner.

Guarantees: every connection of the pool has `search_path` set to the service's schema only,
so an unqualified name can never reach another service's tables; migrations (plain SQL files,
applied in name order) run once each, in a transaction each, under an advisory lock, so
several replicas starting together apply them exactly once.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from .logging import get_logger

log = get_logger(__name__)

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"


async def create_pool(dsn: str, schema: str, *, application_name: str, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        server_settings={"search_path": schema, "application_name": application_name},
        # The pool survives a database restart: a broken connection is replaced, not reused.
        max_inactive_connection_lifetime=60,
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
    if applied_now:
        log.info("migrations applied", schema=schema, migrations=applied_now)
    return applied_now

"""One service's database role can touch its own schema and nothing of another's.

Provisioning (shared.provision) promises it; these tests try it with the real roles on the real
server, for every ordered pair of services. The tables tried are the `inbox` and `outbox` every
service has: they are created first by the shared migrations run as their owner, as the service
itself would at start, so "permission denied" is about privileges, never about a missing table.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from shared import db
from shared.provision import SCHEMAS, role_of, service_dsn

pytestmark = pytest.mark.integration

SERVICES = sorted(SCHEMAS)
PAIRS = list(itertools.permutations(SERVICES, 2))


@pytest.fixture(scope="module")
async def messaging_tables(infra, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every schema has its `inbox` and `outbox`, created by its own role (idempotent)."""
    no_service_migrations = tmp_path_factory.mktemp("no-service-migrations")
    for service in SERVICES:
        role = role_of(service)
        pool = await db.create_pool(
            service_dsn(infra.admin_dsn, service), role, application_name="test-roles", max_size=1
        )
        try:
            await db.migrate(pool, role, Path(no_service_migrations))
        finally:
            await pool.close()


@pytest.fixture
async def connect(infra) -> AsyncIterator:
    opened: list[asyncpg.Connection] = []

    async def as_role(service: str) -> asyncpg.Connection:
        conn = await asyncpg.connect(service_dsn(infra.admin_dsn, service))
        opened.append(conn)
        return conn

    yield as_role
    for conn in opened:
        await conn.close()


@pytest.mark.parametrize(("service", "other"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
async def test_a_role_can_neither_read_nor_write_another_services_schema(messaging_tables, connect, service, other):
    conn = await connect(service)
    schema = role_of(other)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.fetch(f"SELECT * FROM {schema}.outbox LIMIT 1")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute(f"INSERT INTO {schema}.inbox (consumer, event_id) VALUES ('intruder', 'x')")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute(f"CREATE TABLE {schema}.planted (id int)")
    # Not even by changing where unqualified names are looked up.
    await conn.execute(f"SET search_path = {schema}")
    with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedTableError)):
        await conn.fetch("SELECT * FROM outbox LIMIT 1")


@pytest.mark.parametrize("service", SERVICES)
async def test_a_role_creates_reads_and_writes_in_its_own_schema_only(messaging_tables, connect, service):
    conn = await connect(service)
    schema = role_of(service)
    assert await conn.fetchval("SHOW search_path") == schema
    assert not await conn.fetchval(
        "SELECT rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
    )
    tx = conn.transaction()
    await tx.start()
    try:  # leave nothing behind
        await conn.execute("CREATE TABLE role_probe (id text PRIMARY KEY)")
        await conn.execute("INSERT INTO role_probe (id) VALUES ('mine')")
        assert await conn.fetchval(f"SELECT id FROM {schema}.role_probe") == "mine"
        await conn.fetch("SELECT * FROM outbox LIMIT 1")
    finally:
        await tx.rollback()
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CREATE TABLE public.planted (id int)")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CREATE SCHEMA planted")

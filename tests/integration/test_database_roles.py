"""One service's database roles can touch its own schema and nothing of another's, and the
running service's role can touch its data only.

Provisioning (shared.provision) promises it; these tests try it with the real roles on the real
server, for every ordered pair of services. The tables tried are the `inbox` and `outbox` every
service has: they are created first by the shared migrations run as the schema's owner (the
migration role), as the service itself does at start, so "permission denied" is about
privileges, never about a missing table. A service given a role that could change its schema
refuses to start.
"""

from __future__ import annotations

import itertools
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from shared import db
from shared.provision import SCHEMAS, migration_dsn, migration_role_of, role_of, secrets_dir, service_dsn
from shared.testing import ServiceProcess

pytestmark = pytest.mark.integration

SERVICES = sorted(SCHEMAS)
PAIRS = list(itertools.permutations(SERVICES, 2))


@pytest.fixture(scope="module")
async def messaging_tables(infra, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every schema has its `inbox` and `outbox`, created by its migration role (idempotent)."""
    no_service_migrations = tmp_path_factory.mktemp("no-service-migrations")
    for service in SERVICES:
        role = role_of(service)
        pool = await db.create_pool(
            migration_dsn(infra.admin_dsn, service), role, application_name="test-roles", max_size=1
        )
        try:
            await db.migrate(pool, role, Path(no_service_migrations))
        finally:
            await pool.close()


@pytest.fixture
async def connect(infra) -> AsyncIterator:
    opened: list[asyncpg.Connection] = []

    async def as_role(service: str, *, migration: bool = False) -> asyncpg.Connection:
        dsn = (migration_dsn if migration else service_dsn)(infra.admin_dsn, service)
        conn = await asyncpg.connect(dsn)
        opened.append(conn)
        return conn

    yield as_role
    for conn in opened:
        await conn.close()


@pytest.mark.parametrize("migration", [False, True], ids=["runtime", "migration"])
@pytest.mark.parametrize(("service", "other"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
async def test_a_role_can_neither_read_nor_write_another_services_schema(
    messaging_tables, connect, service, other, migration
):
    conn = await connect(service, migration=migration)
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
async def test_the_migration_role_owns_the_schema_and_changes_it_there_only(messaging_tables, connect, service):
    conn = await connect(service, migration=True)
    schema = role_of(service)
    assert await conn.fetchval("SHOW search_path") == schema
    assert await conn.fetchval(
        "SELECT pg_get_userbyid(nspowner) = current_user FROM pg_namespace WHERE nspname = $1", schema
    )
    assert await conn.fetchval(
        "SELECT bool_and(tableowner = current_user) FROM pg_tables WHERE schemaname = $1", schema
    )
    assert not await conn.fetchval(
        "SELECT rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
    )
    tx = conn.transaction()
    await tx.start()
    try:  # leave nothing behind
        await conn.execute("CREATE TABLE role_probe (id bigserial PRIMARY KEY, note text)")
        await conn.execute("INSERT INTO role_probe (note) VALUES ('mine')")
        assert await conn.fetchval(f"SELECT note FROM {schema}.role_probe") == "mine"
        await conn.fetch("SELECT * FROM outbox LIMIT 1")
        # A table created later is the runtime role's to use (default privileges), to use only.
        runtime = role_of(service)
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            assert await conn.fetchval("SELECT has_table_privilege($1, 'role_probe', $2)", runtime, privilege)
        for privilege in ("TRUNCATE", "REFERENCES", "TRIGGER"):
            assert not await conn.fetchval("SELECT has_table_privilege($1, 'role_probe', $2)", runtime, privilege)
        assert await conn.fetchval("SELECT has_sequence_privilege($1, 'role_probe_id_seq', 'USAGE')", runtime)
    finally:
        await tx.rollback()
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CREATE TABLE public.planted (id int)")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CREATE SCHEMA planted")


@pytest.mark.parametrize("service", SERVICES)
async def test_the_runtime_role_reads_and_writes_data_but_cannot_change_the_schema(messaging_tables, connect, service):
    conn = await connect(service)
    schema = role_of(service)
    assert await conn.fetchval("SHOW search_path") == schema
    owner = await conn.fetchval("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1", schema)
    assert owner == migration_role_of(service)
    assert not await conn.fetchval(
        "SELECT rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
    )
    assert not await conn.fetchval("SELECT pg_has_role(current_user, $1, 'MEMBER')", owner)
    tx = conn.transaction()
    await tx.start()
    try:  # data: yes (the tables and the sequence behind outbox.seq), left behind: nothing
        await conn.execute("INSERT INTO inbox (consumer, event_id) VALUES ('role-probe', 'x')")
        await conn.execute("UPDATE inbox SET consumer = 'role-probe-2' WHERE consumer = 'role-probe'")
        assert await conn.fetchval("SELECT count(*) FROM inbox WHERE consumer = 'role-probe-2'") == 1
        await conn.execute("DELETE FROM inbox WHERE consumer = 'role-probe-2'")
        await conn.fetchval(f"SELECT nextval(pg_get_serial_sequence('{schema}.outbox', 'seq'))")
    finally:
        await tx.rollback()
    ddl = [
        "CREATE TABLE planted (id int)",
        f"CREATE TABLE {schema}.planted (id int)",
        "CREATE INDEX planted ON inbox (consumer)",
        "ALTER TABLE inbox ADD COLUMN planted int",
        "ALTER TABLE outbox DISABLE TRIGGER ALL",
        "DROP TABLE inbox",
        "TRUNCATE inbox",
        "DROP TABLE schema_migrations",
        f"ALTER SCHEMA {schema} RENAME TO planted",
        f"DROP SCHEMA {schema} CASCADE",
        "CREATE TABLE public.planted (id int)",
        "CREATE SCHEMA planted",
    ]
    for statement in ddl:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)


@pytest.mark.parametrize("service", SERVICES)
def test_role_passwords_are_generated_and_kept_private(infra, service):
    for role, dsn in (
        (role_of(service), service_dsn(infra.admin_dsn, service)),
        (migration_role_of(service), migration_dsn(infra.admin_dsn, service)),
    ):
        password = urlsplit(dsn).password
        assert password and password != role and role not in password and len(password) >= 24
        path = secrets_dir() / role
        if path.exists():  # absent only when DB_PASSWORD_<ROLE> names the password
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert path.read_text().strip() == password
    assert (
        urlsplit(service_dsn(infra.admin_dsn, service)).password
        != urlsplit(migration_dsn(infra.admin_dsn, service)).password
    )


@pytest.mark.parametrize(
    ("given", "why"),
    [("admin", "is a superuser"), ("migration", "owns schema 'scoring'")],
)
def test_a_service_refuses_to_start_with_a_role_that_can_change_its_schema(infra, log_dir, given, why):
    dsn = infra.admin_dsn if given == "admin" else migration_dsn(infra.admin_dsn, "scoring")
    proc = ServiceProcess("scoring", infra.bootstrap, infra.admin_dsn, log_dir, env={"DATABASE_URL": dsn})
    returncode, log = proc.start_expecting_exit()
    assert returncode != 0
    assert "refusing to start: DATABASE_URL connects as role" in log
    assert why in log
    assert "DATABASE_MIGRATION_URL" in log
    if given == "migration":  # a generated password, never logged
        assert str(urlsplit(dsn).password) not in log

"""One role per service, which can touch only its own schema.

Provisioning makes that true for one database, idempotently: the database itself, and for every
service a login role and a schema of the same name owned by that role, the role's search_path
set to it, nothing granted on it to anyone else, and nothing for PUBLIC on the `public` schema
or on creating schemas in the database. It ends by checking the guarantee and fails if it does
not hold.

    python -m shared.provision      # ADMIN_DATABASE_URL, default below

Role passwords: `DB_PASSWORD_<ROLE>` (e.g. `DB_PASSWORD_PMS_SYNC`) when set, otherwise the role's
name (development only). A role that exists keeps its password unless that variable is set.
"""

from __future__ import annotations

import asyncio
import os
import time
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

DEFAULT_ADMIN_DSN = "postgresql://postgres:postgres@localhost:5432/cancellations"

# service name -> schema name, which is also the role's name
SCHEMAS = {
    "booking": "booking",
    "cancellation-policy": "cancellation_policy",
    "scoring": "scoring",
    "billing": "billing",
    "notification": "notification",
    "pms-sync": "pms_sync",
}

# Serialises concurrent provisioners (roles are cluster-wide, so the lock is taken in `postgres`).
_LOCK_KEY = 0x70726F76  # "prov"


def role_of(service: str) -> str:
    """The role (and schema) of a service, given its service name or its schema name."""
    if service in SCHEMAS:
        return SCHEMAS[service]
    if service in SCHEMAS.values():
        return service
    raise KeyError(f"unknown service {service!r}; known: {', '.join(SCHEMAS)}")


def role_password(role: str) -> str:
    return os.environ.get(f"DB_PASSWORD_{role.upper()}") or role


def _with(dsn: str, *, user: str | None = None, password: str | None = None, database: str | None = None) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if user is not None:
        hostport = netloc.rpartition("@")[2]
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        netloc = f"{auth}@{hostport}"
    path = parts.path if database is None else "/" + quote(database, safe="")
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


def service_dsn(admin_dsn: str, service: str) -> str:
    """The admin DSN with the user and password of that service's role (same host, port, db)."""
    role = role_of(service)
    return _with(admin_dsn, user=role, password=role_password(role))


def _database_of(dsn: str) -> str | None:
    path = urlsplit(dsn).path.lstrip("/")
    return path or None


async def _connect(dsn: str, timeout: float = 30.0) -> asyncpg.Connection:
    """Connect, waiting up to `timeout` seconds for a server that is still starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncpg.connect(dsn)
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.5)


async def _exec(conn: asyncpg.Connection, template: str, *args: str) -> None:
    """Run a utility statement built with format(): %I quotes identifiers, %L literals."""
    placeholders = "".join(f", ${i}::text" for i in range(1, len(args) + 1))
    sql = await conn.fetchval(f"SELECT format($fmt${template}$fmt${placeholders})", *args)
    await conn.execute(sql)


async def _ensure_database(admin: asyncpg.Connection, database: str) -> None:
    if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
        try:
            await _exec(admin, "CREATE DATABASE %I", database)
        except asyncpg.DuplicateDatabaseError:
            pass


async def _ensure_role(admin: asyncpg.Connection, role: str) -> None:
    password = role_password(role)
    if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
        await _exec(admin, "CREATE ROLE %I LOGIN PASSWORD %L", role, password)
    elif os.environ.get(f"DB_PASSWORD_{role.upper()}"):
        await _exec(admin, "ALTER ROLE %I PASSWORD %L", role, password)
    # A service role never gets more than its own schema, whatever someone did to it before.
    await _exec(admin, "ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS", role)


async def _isolate(conn: asyncpg.Connection, database: str) -> None:
    roles = list(SCHEMAS.values())
    await conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
    await _exec(conn, "REVOKE CREATE ON DATABASE %I FROM PUBLIC", database)
    for role in roles:
        schema = role
        await _exec(conn, "GRANT CONNECT ON DATABASE %I TO %I", database, role)
        await _exec(conn, "CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I", schema, role)
        await _exec(conn, "ALTER SCHEMA %I OWNER TO %I", schema, role)
        await _exec(conn, "ALTER ROLE %I SET search_path = %I", role, schema)
        await _exec(conn, "REVOKE ALL ON SCHEMA %I FROM PUBLIC", schema)
        for other in roles:
            if other != role:
                await _exec(conn, "REVOKE ALL ON SCHEMA %I FROM %I", schema, other)
                # Membership would pass the other role's privileges on, schema and all.
                if await conn.fetchval("SELECT pg_has_role($1, $2, 'MEMBER')", other, role):
                    await _exec(conn, "REVOKE %I FROM %I", role, other)


async def _check(conn: asyncpg.Connection) -> None:
    leaks = await conn.fetch(
        """
        SELECT r.role, s.schema
        FROM unnest($1::text[]) AS r(role), unnest($1::text[]) AS s(schema)
        WHERE r.role <> s.schema
          AND (has_schema_privilege(r.role, s.schema, 'USAGE')
               OR has_schema_privilege(r.role, s.schema, 'CREATE'))
        """,
        list(SCHEMAS.values()),
    )
    if leaks:
        pairs = ", ".join(f"{row['role']} -> {row['schema']}" for row in leaks)
        raise RuntimeError(f"provision: roles can still reach other services' schemas: {pairs}")


async def provision(admin_dsn: str, database: str = "cancellations") -> None:
    """Create the database, the service roles and schemas, and lock each role to its schema."""
    try:
        maintenance = await _connect(_with(admin_dsn, database="postgres"))
    except asyncpg.InvalidCatalogNameError:  # a server without the `postgres` database
        maintenance = await _connect(_with(admin_dsn, database="template1"))
    try:
        await maintenance.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await _ensure_database(maintenance, database)
        for role in SCHEMAS.values():
            await _ensure_role(maintenance, role)
        conn = await _connect(_with(admin_dsn, database=database))
        try:
            async with conn.transaction():
                await _isolate(conn, database)
            await _check(conn)
        finally:
            await conn.close()
    finally:
        await maintenance.close()  # also releases the advisory lock


def main() -> None:
    admin_dsn = os.environ.get("ADMIN_DATABASE_URL", DEFAULT_ADMIN_DSN)
    database = _database_of(admin_dsn) or "cancellations"
    asyncio.run(provision(admin_dsn, database))
    print(f"provision: {len(SCHEMAS)} service roles and schemas in database {database!r}")


if __name__ == "__main__":
    main()

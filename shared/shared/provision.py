"""Two roles per service, which can touch only that service's schema.

Provisioning makes that true for one database, idempotently: the database itself, and for every
service
- a migration role (`<schema>_migrate`) that owns the schema and runs the migrations, and
- a runtime role (`<schema>`, what the running service connects as) with data rights only:
  USAGE on the schema (never CREATE), SELECT/INSERT/UPDATE/DELETE on its tables and USAGE/SELECT
  on its sequences, granted on what exists and, by default privileges of the migration role,
  on whatever the migrations create later;
both with search_path set to the schema, nothing granted on it to anyone else, and nothing for
PUBLIC on the `public` schema or on creating schemas in the database. It ends by checking the
guarantee and fails if it does not hold.

    python -m shared.provision      # ADMIN_DATABASE_URL, default below

Role passwords: `DB_PASSWORD_<ROLE>` (e.g. `DB_PASSWORD_PMS_SYNC`, `DB_PASSWORD_PMS_SYNC_MIGRATE`)
when set; otherwise a generated one, kept in `<DB_SECRETS_DIR>/<role>` (default `.local/secrets`,
mode 0600) and reused while that file exists. Provisioning sets every role's password to it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
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


def migration_role_of(service: str) -> str:
    """The role that owns a service's schema and runs its migrations."""
    return f"{role_of(service)}_migrate"


def secrets_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / ".local" / "secrets"
    return Path(os.environ.get("DB_SECRETS_DIR") or default)


def role_password(role: str, *, create: bool = False) -> str:
    """`DB_PASSWORD_<ROLE>`, else the role's secret file; `create` generates a missing one."""
    given = os.environ.get(f"DB_PASSWORD_{role.upper()}")
    if given:
        return given
    path = secrets_dir() / role
    if not path.exists() and create:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another provisioner wrote it first: use theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        raise RuntimeError(
            f"no password for database role {role!r}: set DB_PASSWORD_{role.upper()} or provision "
            f"(python -m shared.provision) to write {path}"
        ) from None
    if not password:
        raise RuntimeError(f"the password file {path} of database role {role!r} is empty")
    return password


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


def server_dsn(dsn: str) -> str:
    """`dsn` without its user and password: where the database is, safe to hand to anyone
    (DATABASE_SERVER_URL; the services' DSNs are made from it with their own roles)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, parts.fragment))


def service_dsn(admin_dsn: str, service: str) -> str:
    """The admin DSN with the user and password of that service's runtime role (same host, port,
    db): the service's DATABASE_URL."""
    role = role_of(service)
    return _with(admin_dsn, user=role, password=role_password(role))


def migration_dsn(admin_dsn: str, service: str) -> str:
    """The same with the service's migration role: the service's DATABASE_MIGRATION_URL."""
    role = migration_role_of(service)
    return _with(admin_dsn, user=role, password=role_password(role))


def _all_roles() -> list[str]:
    return [r for schema in SCHEMAS.values() for r in (schema, migration_role_of(schema))]


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


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for `password` (RFC 5802/7677, as libpq's
    PQencryptPasswordConn makes it): the role is given this, never the password itself, so a
    statement that fails and is written to the server's log holds no secret."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", hashlib.sha256).digest()).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    salt_b64, stored_b64, server_b64 = (base64.b64encode(raw).decode() for raw in (salt, stored_key, server_key))
    return f"SCRAM-SHA-256${iterations}:{salt_b64}${stored_b64}:{server_b64}"


async def _ensure_role(admin: asyncpg.Connection, role: str) -> None:
    password = role_password(role, create=True)
    if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
        try:
            await _exec(admin, "CREATE ROLE %I LOGIN PASSWORD %L", role, scram_verifier(password))
        except asyncpg.DuplicateObjectError:
            pass  # another server-wide provisioner (another database) made it: set it below
    # The password of record is the variable or the secret file (a role from before either, whose
    # password was its name, gets it here).
    await _exec(admin, "ALTER ROLE %I PASSWORD %L", role, scram_verifier(password))
    # A service role never gets more than its own schema, whatever someone did to it before.
    await _exec(admin, "ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS", role)


async def _isolate(conn: asyncpg.Connection, database: str) -> None:
    roles = _all_roles()
    await conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
    await _exec(conn, "REVOKE CREATE ON DATABASE %I FROM PUBLIC", database)
    for schema in SCHEMAS.values():
        runtime, owner = schema, migration_role_of(schema)
        mine = (runtime, owner)
        for role in mine:
            await _exec(conn, "GRANT CONNECT ON DATABASE %I TO %I", database, role)
            await _exec(conn, "ALTER ROLE %I SET search_path = %I", role, schema)
        await _exec(conn, "CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I", schema, owner)
        # Everything the runtime role created or owned before it lost its DDL (schema, tables,
        # sequences, indexes) now belongs to the migration role.
        await _exec(conn, "REASSIGN OWNED BY %I TO %I", runtime, owner)
        await _exec(conn, "ALTER SCHEMA %I OWNER TO %I", schema, owner)
        await _exec(conn, "REVOKE ALL ON SCHEMA %I FROM PUBLIC", schema)
        # The runtime role: data only, on what exists now and on what the migrations create later.
        await _exec(conn, "REVOKE ALL ON SCHEMA %I FROM %I", schema, runtime)
        await _exec(conn, "GRANT USAGE ON SCHEMA %I TO %I", schema, runtime)
        await _exec(conn, "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I", schema, runtime)
        await _exec(conn, "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I", schema, runtime)
        await _exec(
            conn,
            "ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I",
            owner,
            schema,
            runtime,
        )
        await _exec(
            conn,
            "ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO %I",
            owner,
            schema,
            runtime,
        )
        for other in roles:
            if other in mine:
                continue
            await _exec(conn, "REVOKE ALL ON SCHEMA %I FROM %I", schema, other)
            # Membership would pass the other role's privileges on, schema and all.
            for role in mine:
                if await conn.fetchval("SELECT pg_has_role($1, $2, 'MEMBER')", other, role):
                    await _exec(conn, "REVOKE %I FROM %I", role, other)
        # Nor may the runtime role act as its migration role.
        if await conn.fetchval("SELECT pg_has_role($1, $2, 'MEMBER')", runtime, owner):
            await _exec(conn, "REVOKE %I FROM %I", owner, runtime)


async def _check(conn: asyncpg.Connection) -> None:
    leaks = await conn.fetch(
        """
        SELECT r.role, s.schema
        FROM unnest($1::text[]) AS r(role), unnest($2::text[]) AS s(schema)
        WHERE r.role NOT IN (s.schema, s.schema || '_migrate')
          AND (has_schema_privilege(r.role, s.schema, 'USAGE')
               OR has_schema_privilege(r.role, s.schema, 'CREATE'))
        """,
        _all_roles(),
        list(SCHEMAS.values()),
    )
    if leaks:
        pairs = ", ".join(f"{row['role']} -> {row['schema']}" for row in leaks)
        raise RuntimeError(f"provision: roles can still reach other services' schemas: {pairs}")
    ddl = await conn.fetch(
        """
        SELECT s.schema FROM unnest($1::text[]) AS s(schema)
        WHERE has_schema_privilege(s.schema, s.schema, 'CREATE')
           OR pg_has_role(s.schema, (SELECT nspowner FROM pg_namespace WHERE nspname = s.schema), 'USAGE')
        """,
        list(SCHEMAS.values()),
    )
    if ddl:
        names = ", ".join(row["schema"] for row in ddl)
        raise RuntimeError(f"provision: runtime roles can still change their schemas: {names}")


async def provision(admin_dsn: str, database: str = "cancellations") -> None:
    """Create the database, the service roles and schemas, and lock each role to its schema."""
    try:
        maintenance = await _connect(_with(admin_dsn, database="postgres"))
    except asyncpg.InvalidCatalogNameError:  # a server without the `postgres` database
        maintenance = await _connect(_with(admin_dsn, database="template1"))
    try:
        await maintenance.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await _ensure_database(maintenance, database)
        for role in _all_roles():
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
    print(
        f"provision: {len(SCHEMAS)} schemas with a migration and a runtime role each in database {database!r}"
        f" (generated passwords in {secrets_dir()})"
    )


if __name__ == "__main__":
    main()

"""Who may write and read what on the broker (CONTRACT.md "Who may write and read what"), once.

`PRINCIPALS` is the table: each client of the broker has its own principal, the topics it may
write, the topics it may read and the consumer groups it may use. Provisioning applies exactly
this table to a broker with SASL/SCRAM and the StandardAuthorizer (`python -m shared.access`):

- a SCRAM-SHA-512 credential per principal, its password generated once and kept in
  `<KAFKA_SECRETS_DIR>/kafka-<principal>` (mode 0600, default `.local/secrets`);
- the ACLs of the table (ALLOW only; with `allow.everyone.if.no.acl.found=false` everything not
  granted is denied), and the removal of any ACL of these principals the table no longer has;
- one settings file per principal, `<KAFKA_CLIENTS_DIR>/<principal>.env` (default
  `.local/clients`): what a service, an upstream system or a PMS connector sources to connect.

The services' rows must equal what each service consumes and publishes (its ServiceDefinition)
plus its dead-letter topic; a unit test holds them together.
"""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .kafka import KafkaConnection
from .topics import (
    BILLING_COMMANDS,
    BILLING_EVENTS,
    BOOKING_EVENTS,
    NOTIFICATION_EVENTS,
    PMS_INTEGRATION_TOPICS,
    PMS_SYNC_ACKS,
    PMS_SYNC_EVENTS,
    POLICY_DECISIONS,
    POLICY_REQUESTS,
    PRACTICE_EVENTS,
    SCORING_EVENTS,
    SERVICES,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PATIENTS,
    UPSTREAM_PRACTICES,
    UPSTREAM_PROFESSIONALS,
    dead_letter_topic,
)

MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Rights:
    """What one principal may do: write and read these topics, use these consumer groups
    (`groups` literal names, `group_prefixes` every group starting so)."""

    writes: frozenset[str] = frozenset()
    reads: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    group_prefixes: frozenset[str] = frozenset()

    def may(self, operation: str, topic: str) -> bool:
        return topic in (self.writes if operation == "write" else self.reads)


def _service(name: str, reads: Iterable[str], writes: Iterable[str]) -> Rights:
    # A service consumes in the group named after it and dead-letters to its own topic.
    return Rights(
        writes=frozenset([*writes, dead_letter_topic(name)]), reads=frozenset(reads), groups=frozenset([name])
    )


# What every outbound topic is: read by `observer` (dashboards, the console, audits).
OUTBOUND_TOPICS = frozenset(
    [
        BOOKING_EVENTS,
        POLICY_DECISIONS,
        PRACTICE_EVENTS,
        SCORING_EVENTS,
        BILLING_EVENTS,
        NOTIFICATION_EVENTS,
        PMS_SYNC_EVENTS,
        *PMS_INTEGRATION_TOPICS.values(),
    ]
)
DEAD_LETTER_TOPICS = frozenset(dead_letter_topic(s) for s in SERVICES)

PRINCIPALS: Mapping[str, Rights] = {
    "booking": _service(
        "booking",
        reads=[UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES, POLICY_DECISIONS, SCORING_EVENTS],
        writes=[BOOKING_EVENTS, POLICY_REQUESTS],
    ),
    "cancellation-policy": _service(
        "cancellation-policy",
        reads=[POLICY_REQUESTS, UPSTREAM_PRACTICES, UPSTREAM_BOOKINGS, UPSTREAM_PATIENTS],
        writes=[POLICY_DECISIONS, PRACTICE_EVENTS],
    ),
    "scoring": _service(
        "scoring",
        reads=[BOOKING_EVENTS, UPSTREAM_PROFESSIONALS, UPSTREAM_PRACTICES, BILLING_EVENTS],
        writes=[SCORING_EVENTS],
    ),
    "billing": _service(
        "billing", reads=[BOOKING_EVENTS, BILLING_COMMANDS, UPSTREAM_PATIENTS], writes=[BILLING_EVENTS]
    ),
    "notification": _service(
        "notification",
        reads=[UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES, BOOKING_EVENTS, SCORING_EVENTS, BILLING_EVENTS, PMS_SYNC_EVENTS],
        writes=[NOTIFICATION_EVENTS],
    ),
    "pms-sync": _service(
        "pms-sync",
        reads=[UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES, BOOKING_EVENTS, PMS_SYNC_ACKS, BILLING_EVENTS],
        writes=[PMS_SYNC_EVENTS, *PMS_INTEGRATION_TOPICS.values()],
    ),
    "upstream": Rights(writes=frozenset([UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES, UPSTREAM_PATIENTS])),
    "marketplace-admin": Rights(writes=frozenset([UPSTREAM_PROFESSIONALS])),
    "staff-tools": Rights(writes=frozenset([BILLING_COMMANDS])),
    **{
        f"pms-connector-{integration}": Rights(
            writes=frozenset([PMS_SYNC_ACKS]),
            reads=frozenset([topic]),
            group_prefixes=frozenset([f"pms-connector-{integration}"]),
        )
        for integration, topic in PMS_INTEGRATION_TOPICS.items()
    },
    "observer": Rights(reads=OUTBOUND_TOPICS | DEAD_LETTER_TOPICS, group_prefixes=frozenset(["observer-"])),
}

# The broker's own superuser (created when the broker's storage is formatted): provisioning and
# the test harnesses' setup only, never a service.
ADMIN_PRINCIPAL = "admin"


def secrets_dir() -> Path:
    return Path(os.environ.get("KAFKA_SECRETS_DIR") or ROOT / ".local" / "secrets")


def clients_dir() -> Path:
    return Path(os.environ.get("KAFKA_CLIENTS_DIR") or ROOT / ".local" / "clients")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def principal_password(principal: str, *, create: bool = False) -> str:
    """The principal's password from `kafka-<principal>` in the secrets folder (generated once
    when `create`); KAFKA_PASSWORD_<PRINCIPAL> wins when set (a managed deployment's secret)."""
    given = os.environ.get("KAFKA_PASSWORD_" + principal.upper().replace("-", "_"))
    if given:
        return given
    path = secrets_dir() / f"kafka-{principal}"
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"no password for Kafka principal {principal!r} in {path}; run `make up`")
        _write_private(path, secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def client_settings(principal: str, connection: KafkaConnection) -> dict[str, str]:
    """The settings a client of `principal` connects with: the admin connection's broker and
    TLS, the principal's own SCRAM credentials."""
    settings = {
        "KAFKA_BOOTSTRAP_SERVERS": connection.bootstrap_servers,
        "KAFKA_SECURITY_PROTOCOL": connection.security_protocol,
        "KAFKA_SASL_MECHANISM": MECHANISM,
        "KAFKA_SASL_USERNAME": principal,
        "KAFKA_SASL_PASSWORD": principal_password(principal),
    }
    if connection.ssl_cafile:
        settings["KAFKA_SSL_CAFILE"] = str(Path(connection.ssl_cafile).resolve())
    return settings


def parse_env_file(text: str) -> dict[str, str]:
    """`KEY=value` lines (optionally `export KEY=value`, shell-quoted); comments and blanks skipped."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").strip().partition("=")
        if not sep or not name.replace("_", "").isalnum():
            continue
        words = shlex.split(value, comments=True) if value.strip() else [""]
        values[name.strip()] = words[0] if words else ""
    return values


def client_file(principal: str) -> Path:
    if not principal.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"not a principal name: {principal!r}")
    return clients_dir() / f"{principal}.env"


def client_env(principal: str) -> dict[str, str]:
    """The settings in `<KAFKA_CLIENTS_DIR>/<principal>.env`, or {} when provisioning wrote none
    (a broker without SASL: then clients use the environment's settings as they are)."""
    path = client_file(principal)
    return parse_env_file(path.read_text()) if path.is_file() else {}


def writer_of(topic: str) -> str | None:
    """The one principal the table lets write `topic` (None when none or several may)."""
    writers = [p for p, rights in PRINCIPALS.items() if topic in rights.writes]
    return writers[0] if len(writers) == 1 else None


def write_client_file(principal: str, settings: Mapping[str, str]) -> Path:
    path = client_file(principal)
    lines = [
        f"# The Kafka settings of principal {principal!r}, written by `python -m shared.access`.",
        "# Source it (or pass it as an env file) in the process that connects as this principal.",
        *(f"export {name}={shlex.quote(value)}" for name, value in settings.items()),
    ]
    _write_private(path, "\n".join(lines) + "\n")
    return path


# What only provisioning and test harnesses hold: never passed on to a service's process.
ADMIN_ONLY_SETTINGS = frozenset(["ADMIN_DATABASE_URL"])


def service_env(service: str, database_server: str, inherited: Mapping[str, str]) -> dict[str, str]:
    """The environment a service's process starts with: `inherited` without the superusers'
    settings, then the service's own credentials — its runtime and migration roles' DSNs on
    `database_server` (any DSN of that server; its user and password are replaced) and its
    Kafka principal's settings (.local/clients/<service>.env)."""
    from .provision import migration_dsn, service_dsn

    return {
        **{k: v for k, v in inherited.items() if k not in ADMIN_ONLY_SETTINGS},
        "DATABASE_URL": service_dsn(database_server, service),
        "DATABASE_MIGRATION_URL": migration_dsn(database_server, service),
        **client_env(service),
    }


# --- applying the table to a broker (confluent-kafka's AdminClient) -------------------------------


def _admin_api() -> Any:
    """confluent-kafka's admin module (it exports the ACL and SCRAM types without declaring them,
    so they are reached untyped)."""
    return importlib.import_module("confluent_kafka.admin")


def acl_bindings(principal: str, rights: Rights) -> list[Any]:
    """The ALLOW bindings that grant `rights` to `principal` (READ and WRITE imply DESCRIBE)."""
    k = _admin_api()
    ResourceType, AclOperation = k.ResourceType, k.AclOperation

    def allow(kind: Any, name: str, operation: Any, pattern: Any = k.ResourcePatternType.LITERAL) -> Any:
        return k.AclBinding(kind, name, pattern, f"User:{principal}", "*", operation, k.AclPermissionType.ALLOW)

    bindings = [allow(ResourceType.TOPIC, t, AclOperation.WRITE) for t in sorted(rights.writes)]
    bindings += [allow(ResourceType.TOPIC, t, AclOperation.READ) for t in sorted(rights.reads)]
    bindings += [allow(ResourceType.GROUP, g, AclOperation.READ) for g in sorted(rights.groups)]
    bindings += [
        allow(ResourceType.GROUP, g, AclOperation.READ, k.ResourcePatternType.PREFIXED)
        for g in sorted(rights.group_prefixes)
    ]
    return bindings


def _key(binding: Any) -> tuple[str, ...]:
    return (
        str(binding.restype),
        binding.name,
        str(binding.resource_pattern_type),
        binding.principal,
        str(binding.operation),
        str(binding.permission_type),
    )


def _wait(futures: Mapping[Any, Any]) -> None:
    for future in futures.values():
        future.result()


def apply(connection: KafkaConnection, table: Mapping[str, Rights] = PRINCIPALS) -> dict[str, int]:
    """Make the broker hold exactly `table`: SCRAM credentials and ACLs. Idempotent."""
    k = _admin_api()
    admin = k.AdminClient({**connection.librdkafka_config(), "client.id": "shared.access"})
    upserts = [
        k.UserScramCredentialUpsertion(
            principal,
            k.ScramCredentialInfo(k.ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
            principal_password(principal, create=True).encode(),
        )
        for principal in table
    ]
    _wait(admin.alter_user_scram_credentials(upserts, request_timeout=30))

    wanted = {_key(b): b for principal, rights in table.items() for b in acl_bindings(principal, rights)}
    existing = admin.describe_acls(
        k.AclBindingFilter(
            k.ResourceType.ANY, None, k.ResourcePatternType.ANY, None, None, k.AclOperation.ANY, k.AclPermissionType.ANY
        ),
        request_timeout=30,
    ).result()
    ours = {f"User:{p}" for p in table}
    have = {_key(b): b for b in existing if b.principal in ours}
    stale = [b for k, b in have.items() if k not in wanted]
    missing = [b for k, b in wanted.items() if k not in have]
    if missing:
        _wait(admin.create_acls(missing, request_timeout=30))
    if stale:
        _wait(admin.delete_acls(stale, request_timeout=30))
    for principal in table:
        write_client_file(principal, client_settings(principal, connection))
    return {"principals": len(table), "acls": len(wanted), "created": len(missing), "removed": len(stale)}


def cluster_operations(connection: KafkaConnection, timeout: float = 10.0) -> set[str] | None:
    """What the broker lets this connection's principal do to the cluster itself (ALTER: change
    ACLs; CREATE: make topics; ...), or None when the broker did not answer in time."""
    k = _admin_api()
    admin = k.AdminClient({**connection.librdkafka_config(), "client.id": "shared.access.check", "log_level": 0})
    try:
        cluster = admin.describe_cluster(include_authorized_operations=True, request_timeout=timeout).result()
    except Exception:  # noqa: BLE001 - not answering is for the caller's own retries to meet
        return None
    return {op.name for op in cluster.authorized_operations or []}


# A principal that may do any of these runs the broker, not a service.
ADMIN_OPERATIONS = frozenset(["ALTER", "ALTER_CONFIGS", "CREATE", "CLUSTER_ACTION", "ALL"])


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m shared.access",
        description="Create the contract's Kafka principals, their ACLs and .local/clients/<principal>.env "
        "on a broker with SASL/SCRAM, connecting with the KAFKA_* settings of its admin.",
    )
    parser.parse_args()
    connection = KafkaConnection.from_env()
    if not connection.uses_sasl:
        print("access: the broker connection uses no SASL: no principals or ACLs to provision")
        return
    done = apply(connection)
    print(
        f"access: {done['principals']} principals, {done['acls']} ACLs ({done['created']} created,"
        f" {done['removed']} removed); client settings in {clients_dir()}"
    )


if __name__ == "__main__":
    main()

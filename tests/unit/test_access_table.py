"""The broker's access table (shared.access.PRINCIPALS) is the contract's and the services' own:
each service may read exactly what it consumes and write exactly what it publishes plus its
dead-letter topic; the other principals are those CONTRACT.md "Who may write and read what" names.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from shared.access import PRINCIPALS, Rights, acl_bindings, client_env, client_settings, write_client_file
from shared.asyncapi import SERVICE_MODULES
from shared.kafka import KafkaConnection
from shared.topics import (
    ALL_TOPICS,
    BILLING_COMMANDS,
    PMS_INTEGRATION_TOPICS,
    PMS_SYNC_ACKS,
    UPSTREAM_PATIENTS,
    UPSTREAM_PROFESSIONALS,
    dead_letter_topic,
)

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "CONTRACT.md"


def who_may_section() -> str:
    text = CONTRACT.read_text()
    return text.split("## Who may write and read what", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("service", sorted(SERVICE_MODULES))
def test_a_services_rights_are_what_its_definition_consumes_and_publishes(service, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@localhost/none")
    definition = importlib.import_module(SERVICE_MODULES[service]).definition()
    rights = PRINCIPALS[service]
    assert rights.reads == set(definition.consumes)
    assert rights.writes == set(definition.publishes) | {dead_letter_topic(service)}
    assert rights.groups == {definition.name} and not rights.group_prefixes


def test_the_other_principals_are_the_contracts():
    section = who_may_section()
    for name in ("upstream", "marketplace-admin", "staff-tools", "observer"):
        assert f"`{name}`" in section
    # "`upstream` (the three `upstream.bookings|practices|patients.v1` topics)"
    names = re.search(r"`upstream\.([a-z|]+)\.v1`", section)
    assert names is not None
    assert PRINCIPALS["upstream"] == Rights(writes=frozenset(f"upstream.{n}.v1" for n in names[1].split("|")))
    assert UPSTREAM_PATIENTS in PRINCIPALS["upstream"].writes
    assert PRINCIPALS["marketplace-admin"] == Rights(writes=frozenset([UPSTREAM_PROFESSIONALS]))
    assert PRINCIPALS["staff-tools"] == Rights(writes=frozenset([BILLING_COMMANDS]))
    for integration, topic in PMS_INTEGRATION_TOPICS.items():
        connector = PRINCIPALS[f"pms-connector-{integration}"]
        assert connector.reads == {topic} and connector.writes == {PMS_SYNC_ACKS}
        assert connector.group_prefixes == {f"pms-connector-{integration}"}
    observer = PRINCIPALS["observer"]
    assert not observer.writes and observer.group_prefixes == {"observer-"}
    assert {t for t in ALL_TOPICS if t.startswith("dlq.")} <= observer.reads
    # Outbound: every topic a service writes except the booking -> policy internal one.
    written_by_services = set().union(*(PRINCIPALS[s].writes for s in SERVICE_MODULES))
    assert observer.reads == written_by_services - {"policy.requests.v1"}


def test_every_topic_someone_writes_is_one_someone_reads_or_observes():
    written = set().union(*(r.writes for r in PRINCIPALS.values()))
    read = set().union(*(r.reads for r in PRINCIPALS.values()))
    assert {t for t in ALL_TOPICS} <= written
    assert written <= read
    assert UPSTREAM_PATIENTS in PRINCIPALS["billing"].reads  # cards on file


def test_the_acls_grant_exactly_the_table_and_only_allow():
    from confluent_kafka.admin import AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    rights = PRINCIPALS["pms-connector-praktika"]
    bindings = acl_bindings("pms-connector-praktika", rights)
    assert {b.permission_type for b in bindings} == {AclPermissionType.ALLOW}
    assert {b.principal for b in bindings} == {"User:pms-connector-praktika"}
    granted = {(b.restype, b.name, b.resource_pattern_type, b.operation) for b in bindings}
    assert granted == {
        (ResourceType.TOPIC, PMS_SYNC_ACKS, ResourcePatternType.LITERAL, AclOperation.WRITE),
        (ResourceType.TOPIC, PMS_INTEGRATION_TOPICS["praktika"], ResourcePatternType.LITERAL, AclOperation.READ),
        (ResourceType.GROUP, "pms-connector-praktika", ResourcePatternType.PREFIXED, AclOperation.READ),
    }


def test_a_client_settings_file_round_trips_and_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_CLIENTS_DIR", str(tmp_path / "clients"))
    monkeypatch.setenv("KAFKA_SECRETS_DIR", str(tmp_path / "secrets"))
    from shared.access import principal_password

    principal_password("upstream", create=True)
    connection = KafkaConnection(
        bootstrap_servers="broker-1:9094,broker-2:9094",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="admin",
        sasl_password="admin secret with spaces & 'quotes'",
        ssl_cafile=str(tmp_path / "ca.pem"),
    )
    path = write_client_file("upstream", client_settings("upstream", connection))
    assert path.stat().st_mode & 0o777 == 0o600
    settings = client_env("upstream")
    assert settings["KAFKA_SASL_USERNAME"] == "upstream"
    assert settings["KAFKA_SASL_PASSWORD"] == (tmp_path / "secrets" / "kafka-upstream").read_text().strip()
    assert settings["KAFKA_BOOTSTRAP_SERVERS"] == "broker-1:9094,broker-2:9094"
    assert KafkaConnection.from_env(environ=settings).uses_ssl
    assert "admin secret" not in path.read_text()


def test_a_given_password_wins_over_a_generated_one(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("KAFKA_PASSWORD_PMS_CONNECTOR_PRAKTIKA", "from-the-vault")
    from shared.access import principal_password

    assert principal_password("pms-connector-praktika", create=True) == "from-the-vault"
    assert not (tmp_path / "kafka-pms-connector-praktika").exists()


def test_each_topic_has_the_one_writer_tools_speak_as():
    from shared.access import writer_of

    assert writer_of("upstream.bookings.v1") == "upstream"
    assert writer_of(UPSTREAM_PROFESSIONALS) == "marketplace-admin"
    assert writer_of(BILLING_COMMANDS) == "staff-tools"
    assert writer_of("booking.events.v1") == "booking"  # a dead letter's replay to an outbound topic
    assert writer_of("no.such.topic") is None


def test_a_service_process_gets_its_own_credentials_and_never_the_superusers(tmp_path, monkeypatch):
    from shared.access import service_env

    monkeypatch.setenv("KAFKA_CLIENTS_DIR", str(tmp_path / "clients"))
    monkeypatch.setenv("DB_SECRETS_DIR", str(tmp_path / "db"))
    (tmp_path / "db").mkdir()
    for role in ("billing", "billing_migrate"):
        (tmp_path / "db" / role).write_text(f"pw-{role}\n")
    write_client_file("billing", {"KAFKA_SASL_USERNAME": "billing", "KAFKA_SASL_PASSWORD": "kafka-pw"})
    inherited = {
        "ADMIN_DATABASE_URL": "postgresql://postgres:root-pw@db:5432/cancellations",
        "KAFKA_SASL_USERNAME": "admin",
        "KAFKA_SASL_PASSWORD": "admin-pw",
        "LOG_LEVEL": "DEBUG",
    }
    env = service_env("billing", "postgresql://db:5432/cancellations", inherited)
    assert "ADMIN_DATABASE_URL" not in env and "admin-pw" not in env.values()
    assert env["KAFKA_SASL_USERNAME"] == "billing" and env["LOG_LEVEL"] == "DEBUG"
    assert env["DATABASE_URL"] == "postgresql://billing:pw-billing@db:5432/cancellations"
    assert env["DATABASE_MIGRATION_URL"] == "postgresql://billing_migrate:pw-billing_migrate@db:5432/cancellations"


def test_launch_replaces_itself_with_the_service_and_its_credentials(tmp_path, monkeypatch):
    from shared import launch

    monkeypatch.setenv("DB_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("KAFKA_CLIENTS_DIR", str(tmp_path / "clients"))
    monkeypatch.setenv("DATABASE_SERVER_URL", "postgresql://db:5432/cancellations")
    for role in ("pms_sync", "pms_sync_migrate"):
        (tmp_path / role).write_text("pw\n")
    calls = []
    monkeypatch.setattr(launch.os, "execve", lambda path, argv, env: calls.append((argv, env)))
    launch.main(["pms-sync"])
    launch.main(["pms-sync", "shared.migrate"])
    (argv, env), (migrate_argv, _) = calls
    assert argv[1:] == ["-m", "pms_sync"] and migrate_argv[1:] == ["-m", "shared.migrate", "pms-sync"]
    assert env["SERVICE_NAME"] == "pms-sync" and env["DATABASE_URL"].startswith("postgresql://pms_sync:pw@db")
    monkeypatch.delenv("DATABASE_SERVER_URL")
    with pytest.raises(SystemExit):
        launch.main(["pms-sync"])

"""On the real broker each principal can write and read exactly what `shared.access.PRINCIPALS`
(CONTRACT.md "Who may write and read what") gives it, and nothing else.

The matrix asks the broker's own authorizer, authenticated as each principal in turn over
SASL_SSL, which operations it may perform on every contract topic (Kafka's
`include_authorized_operations`), and compares READ and WRITE with the table, for every
principal x topic. Then it tries for real: every write a principal is denied is attempted and
fails without a record reaching the topic, reads and consumer groups are attempted allowed and
denied, and no principal but the superuser may create topics or ACLs. The SASL_SSL round trip
uses the CA that `make up` generated; the broker refuses wrong passwords and clients refuse a
broker they cannot verify.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import GroupAuthorizationFailedError, KafkaError
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicCollection
from confluent_kafka import TopicPartition as ConfluentPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from shared.access import PRINCIPALS, client_env, clients_dir
from shared.kafka import KafkaConnection
from shared.testing import ServiceProcess, envelope, unique
from shared.topics import ALL_TOPICS, BOOKING_EVENTS, UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES

pytestmark = pytest.mark.integration

TOPICS = sorted(ALL_TOPICS)


def connection_of(principal: str) -> KafkaConnection:
    settings = client_env(principal)
    assert settings, f"no {clients_dir()}/{principal}.env: provisioning (`make up`) wrote no settings for it"
    return KafkaConnection.from_env(environ=settings)


@pytest.fixture(scope="module")
def secured(infra) -> KafkaConnection:
    """The harness's own connection: the broker must be the secured one `make up` runs."""
    admin = KafkaConnection.from_env()
    assert admin.uses_sasl, "the broker under test is not secured (KAFKA_SECURITY_PROTOCOL has no SASL)"
    return admin


def authorized_operations(principal: str) -> dict[str, set[str]]:
    """topic -> the operations the broker says `principal` may perform on it (empty: denied)."""
    admin = AdminClient(connection_of(principal).librdkafka_config())
    futures = admin.describe_topics(TopicCollection(TOPICS), include_authorized_operations=True, request_timeout=30)
    found: dict[str, set[str]] = {}
    for topic, future in futures.items():
        try:
            found[topic] = {op.name for op in future.result().authorized_operations or []}
        except KafkaException as exc:
            assert exc.args[0].name() == "TOPIC_AUTHORIZATION_FAILED", f"{principal} on {topic}: {exc}"
            found[topic] = set()
    return found


@pytest.mark.parametrize("principal", sorted(PRINCIPALS))
def test_each_principal_may_read_and_write_exactly_what_the_table_says(secured, principal):
    rights = PRINCIPALS[principal]
    operations = authorized_operations(principal)
    wrong = []
    for topic in TOPICS:
        for operation, kafka_op in (("read", "READ"), ("write", "WRITE")):
            allowed = kafka_op in operations[topic]
            if allowed != rights.may(operation, topic):
                wrong.append(f"{operation} {topic}: broker says {allowed}, table says {rights.may(operation, topic)}")
    assert not wrong, f"{principal}: " + "; ".join(wrong)
    # Nothing beyond reading and writing (and the describing both imply): no alter, delete, create.
    extra = set().union(*operations.values()) - {"READ", "WRITE", "DESCRIBE"}
    assert not extra, f"{principal} may also {sorted(extra)}"


@pytest.mark.parametrize("principal", sorted(PRINCIPALS))
def test_every_write_a_principal_is_denied_fails_and_nothing_arrives(secured, principal):
    denied = [t for t in TOPICS if not PRINCIPALS[principal].may("write", t)]
    assert denied
    producer = Producer({**connection_of(principal).librdkafka_config(), "message.timeout.ms": 20000})
    outcomes: dict[str, str] = {}

    def delivered(err: Any, msg: Any) -> None:
        outcomes[msg.topic()] = err.name() if err is not None else "delivered"

    for topic in denied:
        producer.produce(topic, key=b"acl-probe", value=b"{}", on_delivery=delivered)
    assert producer.flush(30) == 0, "some attempts got no answer at all"
    assert outcomes == {t: "TOPIC_AUTHORIZATION_FAILED" for t in denied}


async def _read_one_batch(connection: KafkaConnection, topic: str, group: str | None = None) -> None:
    consumer = AIOKafkaConsumer(**connection.aiokafka_args(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        if group is None:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            await consumer.getmany(timeout_ms=1000)
        else:
            consumer.subscribe([topic])
            await consumer.getmany(timeout_ms=5000)
            await consumer.commit()
    finally:
        await consumer.stop()


@pytest.mark.parametrize("principal", sorted(PRINCIPALS))
async def test_a_principal_reads_its_topics_and_is_refused_the_others(secured, principal):
    rights = PRINCIPALS[principal]
    connection = connection_of(principal)
    for topic in sorted(rights.reads)[:2]:
        await _read_one_batch(connection, topic)  # allowed: raises nothing
    refused = [t for t in TOPICS if t not in rights.reads]
    assert await asyncio.to_thread(_fetch_errors, connection, refused) == dict.fromkeys(
        refused, "TOPIC_AUTHORIZATION_FAILED"
    )


def _fetch_errors(connection: KafkaConnection, topics: list[str]) -> dict[str, str]:
    """What the broker answers for each topic when asked to fetch it from the beginning (no group,
    no commits): a topic the principal may not even describe is refused already in its metadata;
    one it may describe (it writes there) is refused when fetched."""
    consumer = Consumer(
        {**connection.librdkafka_config(), "group.id": "unused", "enable.auto.commit": False, "log_level": 0}
    )
    try:
        errors: dict[str, str] = {}
        visible = []
        for topic in topics:
            error = consumer.list_topics(topic, timeout=10).topics[topic].error
            if error is not None:
                errors[topic] = error.name()
            else:
                visible.append(topic)
        consumer.assign([ConfluentPartition(t, 0, OFFSET_BEGINNING) for t in visible])
        deadline = time.monotonic() + 30
        while len(errors) < len(topics) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is not None and message.topic() in topics:
                errors.setdefault(message.topic(), message.error().name())
        return errors
    finally:
        consumer.close()


async def test_consumer_groups_are_only_the_principals_own(secured):
    booking = connection_of("booking")
    # A service consumes in the group named after it, and in no other service's group.
    await asyncio.wait_for(_read_one_batch(booking, UPSTREAM_BOOKINGS, group="booking"), 60)
    with pytest.raises(GroupAuthorizationFailedError):
        await asyncio.wait_for(_read_one_batch(booking, UPSTREAM_BOOKINGS, group="scoring"), 60)
    observer = connection_of("observer")
    await asyncio.wait_for(_read_one_batch(observer, BOOKING_EVENTS, group=unique("observer-test")), 60)
    with pytest.raises(GroupAuthorizationFailedError):
        await asyncio.wait_for(_read_one_batch(observer, BOOKING_EVENTS, group="booking"), 60)


@pytest.mark.parametrize("principal", sorted(PRINCIPALS))
def test_no_principal_but_the_superuser_creates_topics_or_grants_rights(secured, principal):
    admin = AdminClient(connection_of(principal).librdkafka_config())
    topic = unique("acl-probe")
    with pytest.raises(KafkaException) as created:
        admin.create_topics([NewTopic(topic, 1, 1)], request_timeout=30)[topic].result()
    assert created.value.args[0].name() in {"TOPIC_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED"}
    grant = AclBinding(
        ResourceType.TOPIC,
        UPSTREAM_BOOKINGS,
        ResourcePatternType.LITERAL,
        f"User:{principal}",
        "*",
        AclOperation.WRITE,
        AclPermissionType.ALLOW,
    )
    with pytest.raises(KafkaException) as granted:
        admin.create_acls([grant], request_timeout=30)[grant].result()
    assert granted.value.args[0].name() == "CLUSTER_AUTHORIZATION_FAILED"


def test_client_settings_files_are_private_and_hold_what_the_contract_names(secured):
    for principal in PRINCIPALS:
        path = clients_dir() / f"{principal}.env"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        settings = client_env(principal)
        assert settings["KAFKA_SASL_USERNAME"] == principal
        assert settings["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert settings["KAFKA_SASL_PASSWORD"] not in (principal, "", secured.sasl_password)
        assert len(settings["KAFKA_SASL_PASSWORD"]) >= 32
        if settings["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL":
            assert Path(settings["KAFKA_SSL_CAFILE"]).is_file()
    passwords = [client_env(p)["KAFKA_SASL_PASSWORD"] for p in PRINCIPALS]
    assert len(set(passwords)) == len(passwords), "two principals share a password"


@pytest.fixture
def plaintext_listener(secured) -> Iterator[str]:
    """The local broker's SASL_PLAINTEXT listener (KAFKA_PORT, default 9092, two below SASL_SSL's)."""
    if os.environ.get("CANCELLATIONS_INFRA") != "local":
        raise AssertionError("the listener test needs the local broker of `make up`")
    tls_port = int(secured.bootstrap_servers.rsplit(":", 1)[1])
    yield f"localhost:{tls_port - 2}"


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
async def test_round_trip_as_upstream_and_booking_on_each_secured_listener(secured, plaintext_listener, protocol):
    upstream, reader = connection_of("upstream"), connection_of("booking")
    if protocol == "SASL_PLAINTEXT":
        upstream = replace(upstream, bootstrap_servers=plaintext_listener, security_protocol=protocol, ssl_cafile=None)
        reader = replace(reader, bootstrap_servers=plaintext_listener, security_protocol=protocol, ssl_cafile=None)
    else:
        assert upstream.security_protocol == "SASL_SSL" and upstream.ssl_cafile, "make up gives clients TLS"
    practice = unique("practice-acl")
    joined = {
        "waitlist_id": unique("waitlist"),
        "practice_id": practice,
        "patient": {"patient_id": "p-1", "first_name": "Ada", "portal_account": False, "card_on_file": False},
        "joined_at": "2026-12-01T09:00:00Z",
    }
    event = envelope("waitlist.joined", practice, joined, event_id=str(uuid.uuid4()))
    consumer = AIOKafkaConsumer(**reader.aiokafka_args(), enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.add_topic(UPSTREAM_PRACTICES)  # fetches its metadata
        partitions = [
            TopicPartition(UPSTREAM_PRACTICES, p) for p in consumer.partitions_for_topic(UPSTREAM_PRACTICES) or []
        ]
        assert partitions
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        producer = AIOKafkaProducer(**upstream.aiokafka_args(), acks="all", enable_idempotence=True)
        await producer.start()
        try:
            await producer.send_and_wait(UPSTREAM_PRACTICES, json.dumps(event).encode(), key=practice.encode())
        finally:
            await producer.stop()
        found = None
        for _ in range(50):
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    if record.key == practice.encode():
                        found = json.loads(record.value)
            if found:
                break
        assert found == event
    finally:
        await consumer.stop()


async def test_a_wrong_password_is_refused(secured):
    upstream = connection_of("upstream")
    producer = AIOKafkaProducer(**replace(upstream, sasl_password="not-" + str(upstream.sasl_password)).aiokafka_args())
    with pytest.raises(KafkaError):
        await asyncio.wait_for(producer.start(), 30)
    await producer.stop()


async def test_a_client_without_the_local_ca_does_not_trust_the_broker(secured):
    upstream = connection_of("upstream")
    assert upstream.uses_ssl
    producer = AIOKafkaProducer(**replace(upstream, ssl_cafile=None).aiokafka_args())  # the system's CAs only
    with pytest.raises(KafkaError):
        await asyncio.wait_for(producer.start(), 30)
    await producer.stop()


def test_a_service_refuses_to_start_as_the_brokers_superuser(secured, infra, log_dir):
    """The broker's own superuser may change ACLs and topics: a service given it does not start,
    and says which setting to fix without writing the password."""
    proc = ServiceProcess(
        "scoring",
        infra.bootstrap,
        infra.admin_dsn,
        log_dir,
        env={"KAFKA_SASL_USERNAME": str(secured.sasl_username), "KAFKA_SASL_PASSWORD": str(secured.sasl_password)},
    )
    returncode, log = proc.start_expecting_exit()
    assert returncode != 0
    assert f"refusing to start: KAFKA_SASL_USERNAME {secured.sasl_username!r} may change the broker itself" in log
    assert str(secured.sasl_password) not in log


def test_a_service_starts_as_its_own_principal_which_may_not_change_the_broker(secured):
    from shared.access import ADMIN_OPERATIONS, cluster_operations

    assert cluster_operations(secured) & ADMIN_OPERATIONS  # the superuser, as the check sees it
    for principal in PRINCIPALS:
        operations = cluster_operations(connection_of(principal))
        assert operations is not None and not operations & ADMIN_OPERATIONS, principal

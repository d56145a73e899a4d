"""A CloudEvents record in binary mode (ce_* headers, the value the data alone), published to
the real broker, is handled by a running service like its structured form; one with a hostile
header is dead-lettered with a reason that does not quote it, and the partition flows on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from shared.kafka import client_args
from shared.testing import EventWatcher, ServiceProcess, iso, unique, wait_for_row
from shared.topics import UPSTREAM_PRACTICES, dead_letter_topic

pytestmark = pytest.mark.integration

HIDDEN = "ce-hidden-7731"  # in a hostile header: never in the dead letter's reason


@pytest.fixture(scope="module")
def notification(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = ServiceProcess("notification", infra.bootstrap, infra.admin_dsn, tmp_path_factory.mktemp("binary-ce"))
    try:
        yield service.start()
    finally:
        service.stop()


@pytest.fixture
async def producer(infra: Any) -> AsyncIterator[AIOKafkaProducer]:
    """Our own producer: a binary-mode record is all headers, which Publisher.raw does not send."""
    p = AIOKafkaProducer(**client_args(infra.bootstrap), enable_idempotence=True, acks="all")
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def practice_configured(practice_id: str) -> dict[str, Any]:
    return {
        "practice_id": practice_id,
        "name": "Binary Dental",
        "timezone": "Europe/Berlin",
        "locale": "de",
        "contact": {"email": f"desk-{practice_id}@clinic.test", "preferred_channel": "email"},
        "cancellation": {"notify_practice_on_online_cancel": True},
        "pms": {"integration": "none"},
    }


def binary_headers(event_id: str, type_: str, subject: str, **extra: bytes) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_type", type_.encode()),
        ("ce_source", b"upstream/binary-test"),
        ("ce_subject", subject.encode()),
        ("ce_time", iso(datetime.now(UTC)).encode()),
        ("ce_correlationid", f"corr-{event_id}".encode()),
        ("content-type", b"application/json"),
        *extra.items(),
    ]


async def test_a_binary_mode_event_is_handled_and_a_hostile_header_dead_lettered(
    infra: Any, notification: ServiceProcess, producer: AIOKafkaProducer
) -> None:
    practice_id, hostile_id = unique("pr-binary"), unique("pr-hostile")
    hostile = [h for h in binary_headers(unique("ev"), "practice.configured", hostile_id) if h[0] != "ce_subject"]
    hostile.append(("ce_subject", HIDDEN.encode() + b"\x07"))
    dlq = dead_letter_topic("notification")
    async with EventWatcher(infra.bootstrap, [dlq]) as watcher:
        # The hostile one first, on the same key (partition) as the healthy one behind it.
        await producer.send_and_wait(
            UPSTREAM_PRACTICES,
            value=json.dumps(practice_configured(hostile_id)).encode(),
            key=practice_id.encode(),
            headers=hostile,
        )
        await producer.send_and_wait(
            UPSTREAM_PRACTICES,
            value=json.dumps(practice_configured(practice_id)).encode(),
            key=practice_id.encode(),
            headers=binary_headers(unique("ev"), "practice.configured", practice_id),
        )
        await wait_for_row(
            infra.admin_dsn,
            "SELECT true FROM notification.practices WHERE practice_id = $1 AND locale = 'de'"
            " AND timezone = 'Europe/Berlin'",
            practice_id,
            timeout=60,
        )
        [letter] = await watcher.wait_for(lambda s: s.topic == dlq and s.key == practice_id, timeout=30)
    reason = letter.data["error"]
    assert "ce_subject" in reason and "control character" in reason, reason
    assert HIDDEN not in json.dumps(reason)

"""Hostile input on the real broker and database, with booking and cancellation-policy running
as processes: each class of hostile record is refused with a reason, exactly once, while the
healthy messages behind it on the same partition, and behind its dead letter in the outbox,
complete; a row the broker refuses for good is parked and the rows behind it flow; a request
that claims to be older than it is is decided at its record's time (docs/rules.md, "Time and
trust").

Every test makes its own ids and looks only at them: other traffic may share the topics.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from helpers_faults import (
    admin_fetch,
    admin_val,
    cancellation_requested,
    eventually,
    future,
    metric_samples,
    scheduled,
    start,
    stop,
    wait_group,
)
from shared.contracts.deadletter import ORIGINAL_VALUE_MAX_BYTES
from shared.testing import EventWatcher, ServiceProcess, envelope, iso, unique
from shared.topics import BOOKING_EVENTS, UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES, dead_letter_topic

pytestmark = pytest.mark.integration

BOOKING_DLQ = dead_letter_topic("booking")
BROKER_LIMIT = 1_048_576


@pytest.fixture(scope="module")
async def services(infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, ServiceProcess]]:
    logs: Path = tmp_path_factory.mktemp("hostile-input")
    procs = {}
    try:
        for name in ("cancellation-policy", "booking"):
            await wait_group(infra.bootstrap, name, members=0, timeout=30)
            procs[name] = await start(ServiceProcess(name, infra.bootstrap, infra.admin_dsn, logs))
        yield procs
    finally:
        for proc in procs.values():
            await stop(proc)


def hostile_records(booking_id: str) -> list[tuple[str, bytes, str]]:
    """(class, bytes, what the dead letter's reason must say) for every class of the report."""
    healthy = envelope("booking.scheduled", booking_id, scheduled(booking_id, future(), practice_id="p-hostile"))

    def with_data(**overrides: object) -> bytes:
        return json.dumps({**healthy, "id": str(uuid.uuid4()), "data": {**healthy["data"], **overrides}}).encode()

    return [
        ("a start that overflows when turned into UTC", with_data(starts_at="9999-12-31T23:59:59-23:59"), "starts_at"),
        ("JSON nested 5000 deep", b'{"specversion": "1.0", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested"),
        ("a number with 5000 digits", b'{"specversion": "1.0", "id": ' + b"7" * 5000 + b"}", "JSON"),
        ("a 700 KB message that breaks the contract", with_data(service_code="x" * 700_000), "bytes"),
        ("a NUL character", with_data(service_code="a\u0000b"), "NUL"),
        ("bytes that are not UTF-8", b"\xff\xfe\x00{", "UTF-8"),
    ]


async def test_hostile_records_are_dead_lettered_once_and_the_partition_flows(infra, publisher, services) -> None:
    booking_id = unique("bk-hostile")
    hostile = hostile_records(booking_id)
    before = await dead_letters_counted(services["booking"])
    async with EventWatcher(infra.bootstrap, [UPSTREAM_BOOKINGS, BOOKING_DLQ, BOOKING_EVENTS]) as watcher:
        for _, value, _ in hostile:  # one key: one partition, the healthy ones queue behind these
            await publisher.raw(UPSTREAM_BOOKINGS, booking_id, value)
        await publisher.event(
            UPSTREAM_BOOKINGS, "booking.scheduled", booking_id, scheduled(booking_id, future(), practice_id="p-hostile")
        )
        request_id = unique("req")
        await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.cancellation_requested",
            booking_id,
            cancellation_requested(booking_id, request_id),
        )

        # Behind the dead letters in booking's outbox, the cancellation leaves too.
        await watcher.wait_for(
            lambda s: s.topic == BOOKING_EVENTS and s.type == "booking.cancelled" and s.key == booking_id, timeout=60
        )
        await watcher.settle(1.5)
        sent = [s for s in watcher.seen if s.topic == UPSTREAM_BOOKINGS and s.key == booking_id][: len(hostile)]
        dead = [s for s in watcher.seen if s.topic == BOOKING_DLQ and s.key == booking_id]

    assert len(dead) == len(hostile), [d.data.get("error") for d in dead]
    by_position = {(d.data["original_partition"], d.data["original_offset"]): d for d in dead}
    for (name, value, says), origin in zip(hostile, sent, strict=True):
        letter = by_position[(origin.partition, origin.offset)]  # exactly its own record
        data = letter.data
        assert says.lower() in data["error"].lower(), (name, data["error"])
        assert 0 < letter.size < BROKER_LIMIT, name
        assert data["original_value_length"] == len(value), name
        assert data["original_value_sha256"] == hashlib.sha256(value).hexdigest(), name
        assert data["original_value_truncated"] == (len(value) > ORIGINAL_VALUE_MAX_BYTES), name
    big = by_position[(sent[3].partition, sent[3].offset)].data
    assert big["original_value_truncated"] and len(big["original_value_text"]) == ORIGINAL_VALUE_MAX_BYTES
    # Each dead letter written is counted, as a contract violation (at least these: a record left
    # in the topic by an earlier run may be dead-lettered meanwhile too).
    assert await dead_letters_counted(services["booking"]) >= before + len(hostile)

    trail = await admin_fetch(
        infra.admin_dsn, "SELECT action FROM booking.audit_trail WHERE booking_id = $1 ORDER BY seq", booking_id
    )
    assert [r["action"] for r in trail][:4] == [
        "scheduled",
        "cancellation_requested",
        "cancellation_assessed",
        "cancelled",
    ]


async def test_a_row_the_broker_refuses_is_parked_and_the_rows_behind_it_flow(infra, publisher, services) -> None:
    """A row over the broker's limit can no longer be written through the code (it is refused
    when built), so it is put in the outbox the way an older release might have left it."""
    parked_key = unique("bk-parked")
    envelope_too_large = envelope("booking.completed", parked_key, {"booking_id": parked_key, "pad": "x" * 1_200_000})
    await admin_val(
        infra.admin_dsn,
        "INSERT INTO booking.outbox (id, topic, key, type, payload) VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING seq",
        uuid.UUID(envelope_too_large["id"]),
        BOOKING_EVENTS,
        parked_key,
        "booking.completed",
        json.dumps(envelope_too_large),
    )
    booking_id = unique("bk-after-parked")
    async with EventWatcher(infra.bootstrap, [BOOKING_EVENTS]) as watcher:
        await publisher.event(
            UPSTREAM_BOOKINGS, "booking.scheduled", booking_id, scheduled(booking_id, future(), practice_id="p-hostile")
        )
        await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.cancellation_requested",
            booking_id,
            cancellation_requested(booking_id, unique("req")),
        )
        await watcher.wait_for(lambda s: s.type == "booking.cancelled" and s.key == booking_id, timeout=60)
        assert not watcher.matching(lambda s: s.key == parked_key)

    row = await admin_fetch(
        infra.admin_dsn, "SELECT published_at, parked_at, park_reason FROM booking.outbox WHERE key = $1", parked_key
    )
    assert row[0]["published_at"] is None and row[0]["parked_at"] is not None
    assert "TooLarge" in row[0]["park_reason"], row[0]["park_reason"]
    parked = await metric_samples(services["booking"], "cancellations_outbox_parked_total")
    assert sum(value for _, value in parked) >= 1
    # The scrape reads the parked rows from the table: this one is among them.
    rows = await metric_samples(services["booking"], "cancellations_outbox_parked_rows")
    assert [labels["service"] for labels, value in rows if value >= 1] == ["booking"], rows


async def dead_letters_counted(proc: ServiceProcess) -> float:
    samples = await metric_samples(proc, "cancellations_dead_letters_total")
    return sum(value for labels, value in samples if labels["reason"] == "contract_violation")


async def test_a_backdated_cancellation_is_decided_at_its_record_time(infra, publisher, services) -> None:
    practice_id, booking_id, request_id = unique("p-trust"), unique("bk-trust"), unique("req")
    fee = {"amount": "45.00", "currency": "EUR", "code": "D9987", "code_system": "CDT"}
    await publisher.event(
        UPSTREAM_PRACTICES,
        "practice.configured",
        practice_id,
        {
            "practice_id": practice_id,
            "name": "Trust Dental",
            "timezone": "Europe/Berlin",
            "locale": "de",
            "fees": {"late_cancellation": fee},
        },
    )
    await eventually(
        lambda: admin_val(
            infra.admin_dsn,
            "SELECT count(*) FROM cancellation_policy.practice_settings WHERE practice_id = $1",
            practice_id,
        ),
        lambda n: n >= 1,
        timeout=30,
        what="the practice's settings stored by the policy",
    )
    starts = (datetime.now(UTC) + timedelta(hours=10)).replace(microsecond=0)
    claimed = datetime.now(UTC) - timedelta(days=2)
    async with EventWatcher(infra.bootstrap, [BOOKING_EVENTS]) as watcher:
        await publisher.event(
            UPSTREAM_BOOKINGS, "booking.scheduled", booking_id, scheduled(booking_id, starts, practice_id=practice_id)
        )
        await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.cancellation_requested",
            booking_id,
            {**cancellation_requested(booking_id, request_id), "requested_at": iso(claimed)},
        )
        [cancelled] = await watcher.wait_for(
            lambda s: s.type == "booking.cancelled" and s.key == booking_id, timeout=60
        )

    decision = cancelled.data["decision"]
    assert decision["classification"] == "late", decision  # the claim alone would have made it timely
    assert decision["fee"]["amount"] == "45.00"
    assert "not the time it claims" in decision["explanation"]
    [requested] = await admin_fetch(
        infra.admin_dsn,
        "SELECT at, detail FROM booking.audit_trail WHERE booking_id = $1 AND action = 'cancellation_requested'",
        booking_id,
    )
    assert json.loads(requested["detail"])["claimed_at"].startswith(claimed.date().isoformat())
    assert abs(requested["at"] - datetime.now(UTC)) < timedelta(minutes=5)

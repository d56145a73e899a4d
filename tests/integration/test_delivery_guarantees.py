"""The message-handling recipe (docs/design.md#how-a-service-handles-a-message), proven on the real
broker and database with the booking and cancellation-policy services running as processes.

What must stay true, one test each:
- a message delivered twice has its effect once;
- a crash after the database commit and before the offset commit loses nothing and repeats
  nothing (the records come again and are recognised);
- a relay that published and died before marking its rows republishes them, and the consumer
  downstream has their effect once;
- what can never be processed is dead-lettered with its original bytes, and the service goes on;
- the database going away mid-stream, or every connection cut mid-transaction, loses nothing;
- two replicas in one consumer group keep per-booking order, also when one of them dies.

The services run as real processes, alone in their consumer groups (a member a test did not
start would take a share of the records, and of what the test counts): the fixtures wait for
the groups to be empty and say so when they are not.

Every test makes its own ids and looks only at them: other traffic may share the topics.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from helpers_faults import (
    admin_fetch,
    admin_val,
    audit_actions,
    cancellation_requested,
    end_offsets,
    eventually,
    future,
    message_counts,
    postgres,
    postgres_is_local,
    rescheduled,
    rewind_group,
    scheduled,
    sever_connections,
    start,
    stop,
    transient_retries,
    wait_group,
)
from shared.contracts.deadletter import MessageDeadLettered
from shared.testing import EventWatcher, Publisher, ServiceProcess, envelope, unique
from shared.topics import BOOKING_EVENTS, POLICY_DECISIONS, POLICY_REQUESTS, UPSTREAM_BOOKINGS, dead_letter_topic

pytestmark = pytest.mark.integration

BOOKING_DLQ = dead_letter_topic("booking")
CANCELLED_TRAIL = ["scheduled", "cancellation_requested", "cancellation_assessed", "cancelled"]


@pytest.fixture(scope="module")
def service_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("delivery-guarantees")


@pytest.fixture(scope="module")
async def policy(infra, service_logs: Path) -> AsyncIterator[ServiceProcess]:
    """cancellation-policy, answering booking's requests for the whole module (the only member
    of its consumer group, so the duplicates it counts are all the ones there were)."""
    await wait_group(infra.bootstrap, "cancellation-policy", members=0, timeout=30)
    proc = ServiceProcess("cancellation-policy", infra.bootstrap, infra.admin_dsn, service_logs)
    await start(proc)
    try:
        yield proc
    finally:
        await stop(proc)


@pytest.fixture
async def bookings(infra, service_logs: Path) -> AsyncIterator[list[ServiceProcess]]:
    """A list to start booking processes into; every one of them is stopped after the test."""
    # Records are shared out among the members of the group "booking": a member this test did
    # not start would take some of them, and what the test counts.
    await wait_group(infra.bootstrap, "booking", members=0, timeout=30)
    started: list[ServiceProcess] = []
    try:
        yield started
    finally:
        for proc in started:
            await stop(proc)
        # The next test starts with the group settled, not waiting out a dead member's session.
        await wait_group(infra.bootstrap, "booking", members=0, timeout=30)


async def start_booking(infra, service_logs: Path, started: list[ServiceProcess]) -> ServiceProcess:
    proc = ServiceProcess("booking", infra.bootstrap, infra.admin_dsn, service_logs)
    started.append(proc)
    return await start(proc)


def of_type(type_: str, booking_ids: set[str]):
    return lambda s: s.type == type_ and s.key in booking_ids


def ids_per_key(seen) -> dict[str, set[str]]:
    """booking id -> the distinct envelope ids seen for it (a republished event counts once)."""
    out: dict[str, set[str]] = {}
    for s in seen:
        out.setdefault(s.key, set()).add(s.value["id"])
    return out


def steps(actions: list[str], wanted: list[str]) -> list[str]:
    """The audit trail's actions that a test is about, in the order recorded (the trail may
    hold others, e.g. the slot's release)."""
    return [a for a in actions if a in wanted]


def repeated(actions: list[str]) -> list[str]:
    """Actions recorded more than once: in these tests, each step happens once per booking."""
    return sorted(a for a, n in Counter(actions).items() if n > 1)


async def publish_bookings(publisher: Publisher, booking_ids: list[str], practice_id: str) -> dict[str, str]:
    """booking.scheduled then booking.cancellation_requested for each; returns booking -> request id."""
    requests = {}
    for booking_id in booking_ids:
        await publisher.event(
            UPSTREAM_BOOKINGS, "booking.scheduled", booking_id, scheduled(booking_id, future(), practice_id=practice_id)
        )
    for booking_id in booking_ids:
        requests[booking_id] = unique("req")
        await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.cancellation_requested",
            booking_id,
            cancellation_requested(booking_id, requests[booking_id]),
        )
    return requests


async def assert_cancelled_once(
    infra, watcher: EventWatcher, requests: dict[str, str], *, timeout: float, trail: list[str] = CANCELLED_TRAIL
) -> None:
    """Every booking: one booking.cancelled (by envelope id), one policy request, one decision,
    no dead letter, and an audit trail that records each step once, in order."""
    booking_ids = set(requests)

    async def cancelled_bookings() -> set[str]:
        return {s.key for s in watcher.matching(of_type("booking.cancelled", booking_ids))}

    await eventually(
        cancelled_bookings,
        lambda done: done == booking_ids,
        timeout=timeout,
        what=f"booking.cancelled for all {len(booking_ids)} bookings",
    )
    await watcher.settle(1.0)  # time for anything that should not come (a second cancellation)
    cancelled = ids_per_key(watcher.matching(of_type("booking.cancelled", booking_ids)))
    asked = ids_per_key(watcher.matching(of_type("cancellation.assessment_requested", booking_ids)))
    decided = ids_per_key(watcher.matching(of_type("cancellation.assessed", booking_ids)))
    assert {b: len(ids) for b, ids in cancelled.items()} == {b: 1 for b in booking_ids}
    assert {b: len(ids) for b, ids in asked.items()} == {b: 1 for b in booking_ids}
    assert {b: len(ids) for b, ids in decided.items()} == {b: 1 for b in booking_ids}
    for s in watcher.matching(of_type("booking.cancelled", booking_ids)):
        assert s.data["request_id"] == requests[s.key]
    trails = await audit_actions(infra.admin_dsn, sorted(booking_ids))
    assert {b: steps(actions, trail) for b, actions in trails.items()} == {b: trail for b in booking_ids}
    assert {b: repeated(actions) for b, actions in trails.items()} == {b: [] for b in booking_ids}
    decisions = await admin_fetch(
        infra.admin_dsn,
        "SELECT request_id, count(*) AS n FROM cancellation_policy.decisions WHERE request_id = ANY($1::text[])"
        " GROUP BY request_id",
        list(requests.values()),
    )
    assert {r["request_id"]: r["n"] for r in decisions} == {r: 1 for r in requests.values()}
    dead = watcher.matching(lambda s: s.topic == BOOKING_DLQ and s.data.get("original_key") in booking_ids)
    assert dead == []


WATCHED = [BOOKING_EVENTS, POLICY_REQUESTS, POLICY_DECISIONS, BOOKING_DLQ]


async def test_a_message_delivered_twice_has_its_effect_once(infra, publisher, policy, bookings, service_logs):
    booking = await start_booking(infra, service_logs, bookings)
    booking_id, request_id, practice_id = unique("bk"), unique("req"), unique("practice")
    schedule = envelope("booking.scheduled", booking_id, scheduled(booking_id, future(), practice_id=practice_id))
    cancel = envelope("booking.cancellation_requested", booking_id, cancellation_requested(booking_id, request_id))

    async with EventWatcher(infra.bootstrap, WATCHED) as watcher:
        for env in (schedule, schedule, cancel, cancel):  # the same envelope ids, twice each
            await publisher.raw(UPSTREAM_BOOKINGS, booking_id, json.dumps(env).encode())

        # Both second copies were consumed and recognised: the service counted them.
        await eventually(
            lambda: message_counts(booking),
            lambda c: c.get((UPSTREAM_BOOKINGS, "duplicate"), 0) >= 2,
            timeout=30,
            what="booking counts the two redelivered envelopes as duplicates",
        )
        await assert_cancelled_once(infra, watcher, {booking_id: request_id}, timeout=30)
        # Not only distinct: nothing was published twice either (no fault in this test).
        assert len(watcher.matching(of_type("booking.cancelled", {booking_id}))) == 1
        assert len(watcher.matching(of_type("cancellation.assessment_requested", {booking_id}))) == 1

    view = booking.get_json(f"/bookings/{booking_id}")
    assert view["status"] == "cancelled"
    assert steps([e["action"] for e in view["audit_trail"]], CANCELLED_TRAIL) == CANCELLED_TRAIL
    assert (
        await admin_val(
            infra.admin_dsn,
            "SELECT count(*) FROM booking.inbox WHERE event_id = ANY($1::text[])",
            [schedule["id"], cancel["id"]],
        )
        == 2
    )


async def test_a_crash_after_the_database_commit_and_before_the_offset_commit_repeats_nothing(
    infra, publisher, policy, bookings, service_logs
):
    """SIGKILL mid-stream, then put the group's offsets back where they were before this test's
    records: the state of a consumer that committed in Postgres and died before acknowledging.
    Everything it had done comes again, is recognised, and has no second effect."""
    before = await end_offsets(infra.bootstrap, UPSTREAM_BOOKINGS)
    booking = await start_booking(infra, service_logs, bookings)
    await wait_group(infra.bootstrap, "booking", members=1)
    booking_ids = [unique("bk") for _ in range(30)]
    practice_id = unique("practice")

    async with EventWatcher(infra.bootstrap, WATCHED) as watcher:
        requests = await publish_bookings(publisher, booking_ids, practice_id)
        # Wait until part of the stream is committed in booking's database, then kill at once.
        upstream_done = (
            "SELECT count(*) FROM booking.audit_trail WHERE booking_id = ANY($1::text[])"
            " AND action IN ('scheduled', 'cancellation_requested')"
        )
        await eventually(
            lambda: admin_val(infra.admin_dsn, upstream_done, booking_ids),
            lambda n: n >= 1,
            timeout=30,
            every=0.02,
            what="booking commits part of the stream",
        )
        booking.kill()
        # Each of these rows was committed with the inbox claim of the record that caused it.
        done_before_kill = await admin_val(infra.admin_dsn, upstream_done, booking_ids)
        assert done_before_kill >= 1

        # The dead member leaves the group when its session times out; then nobody may consume
        # until the offsets are back before this test's records.
        await wait_group(infra.bootstrap, "booking", members=0, timeout=40)
        await rewind_group(infra.bootstrap, "booking", before)

        restarted = await start_booking(infra, service_logs, bookings)
        await assert_cancelled_once(infra, watcher, requests, timeout=60)

    # The redelivery really happened: everything committed before the kill came again and was
    # recognised as seen (the upstream records of this test were at least those).
    counts = await message_counts(restarted)
    assert counts.get((UPSTREAM_BOOKINGS, "duplicate"), 0) >= done_before_kill
    rows = await admin_fetch(
        infra.admin_dsn,
        "SELECT booking_id, count(*) AS n FROM booking.pending_requests WHERE booking_id = ANY($1::text[])"
        " GROUP BY booking_id",
        booking_ids,
    )
    assert {r["booking_id"]: r["n"] for r in rows} == {b: 1 for b in booking_ids}


async def test_a_relay_that_dies_before_marking_rows_published_republishes_them_and_downstream_has_their_effect_once(
    infra, publisher, policy, bookings, service_logs
):
    """Rows published, then put back to unpublished while booking is down: exactly what a relay
    killed between the broker's ack and its UPDATE leaves behind."""
    booking = await start_booking(infra, service_logs, bookings)
    booking_ids = [unique("bk") for _ in range(5)]
    practice_id = unique("practice")

    async with EventWatcher(infra.bootstrap, WATCHED) as watcher:
        requests = await publish_bookings(publisher, booking_ids, practice_id)
        await assert_cancelled_once(infra, watcher, requests, timeout=30)
        await stop(booking)  # graceful: everything committed is published and marked
        trails_before = await audit_actions(infra.admin_dsn, booking_ids)

        unmarked = await admin_fetch(
            infra.admin_dsn,
            "UPDATE booking.outbox SET published_at = NULL WHERE key = ANY($1::text[])"
            " AND published_at IS NOT NULL RETURNING id::text AS id, topic",
            booking_ids,
        )
        by_topic = Counter(r["topic"] for r in unmarked)
        # Per booking: the policy request, and booking.cancelled with what follows it.
        assert by_topic[POLICY_REQUESTS] == 5 and by_topic[BOOKING_EVENTS] >= 5, by_topic
        policy_before = await message_counts(policy)

        await start_booking(infra, service_logs, bookings)
        republished = {r["id"] for r in unmarked}

        async def times_published() -> Counter[str]:
            return Counter(s.value["id"] for s in watcher.seen if s.value.get("id") in republished)

        await eventually(
            times_published,
            lambda seen: len(seen) == len(republished) and min(seen.values()) >= 2,
            timeout=30,
            what="every unmarked row published a second time, with its own envelope id",
        )
        # The policy service got the five requests again, recognised them, and decided nothing new.
        await eventually(
            lambda: message_counts(policy),
            lambda c: (
                c.get((POLICY_REQUESTS, "duplicate"), 0) - policy_before.get((POLICY_REQUESTS, "duplicate"), 0) >= 5
            ),
            timeout=30,
            what="cancellation-policy counts the republished requests as duplicates",
        )
        await watcher.settle(1.0)
        decided = ids_per_key(watcher.matching(of_type("cancellation.assessed", set(booking_ids))))
        assert {b: len(ids) for b, ids in decided.items()} == {b: 1 for b in booking_ids}
        assert len(watcher.matching(of_type("cancellation.assessed", set(booking_ids)))) == 5

    decisions = await admin_fetch(
        infra.admin_dsn,
        "SELECT request_id, count(*) AS n FROM cancellation_policy.decisions WHERE booking_id = ANY($1::text[])"
        " GROUP BY request_id",
        booking_ids,
    )
    assert {r["request_id"]: r["n"] for r in decisions} == {r: 1 for r in requests.values()}
    after = await audit_actions(infra.admin_dsn, booking_ids)
    assert after == trails_before, "republished events changed nothing in booking"
    assert (
        await admin_val(
            infra.admin_dsn,
            "SELECT count(*) FROM booking.outbox WHERE key = ANY($1::text[]) AND published_at IS NULL",
            booking_ids,
        )
        == 0
    )


async def test_what_can_never_be_processed_is_dead_lettered_with_its_bytes_and_the_service_goes_on(
    infra, publisher, bookings, service_logs
):
    booking = await start_booking(infra, service_logs, bookings)
    booking_id, practice_id = unique("bk"), unique("practice")
    no_start = scheduled(booking_id, future(), practice_id=practice_id)
    del no_start["starts_at"]
    # One key for all: one partition, so the valid booking comes after the bad records.
    bad = {
        "not JSON": b'{"specversion": "1.0", "id": \xff\xfe not json',
        "unknown event type 'booking.teleported'": json.dumps(
            envelope("booking.teleported", booking_id, {"booking_id": booking_id})
        ).encode(),
        "starts_at: Field required": json.dumps(envelope("booking.scheduled", booking_id, no_start)).encode(),
    }

    async with EventWatcher(infra.bootstrap, [UPSTREAM_BOOKINGS, BOOKING_DLQ]) as watcher:
        for value in bad.values():
            await publisher.raw(UPSTREAM_BOOKINGS, booking_id, value)
        await publisher.event(
            UPSTREAM_BOOKINGS, "booking.scheduled", booking_id, scheduled(booking_id, future(), practice_id=practice_id)
        )

        dead = await watcher.wait_for(
            lambda s: s.topic == BOOKING_DLQ and s.key == booking_id, count=len(bad), timeout=30
        )
        sent = [s for s in watcher.seen if s.topic == UPSTREAM_BOOKINGS and s.key == booking_id][: len(bad)]
        await eventually(
            lambda: admin_val(infra.admin_dsn, "SELECT status FROM booking.bookings WHERE booking_id = $1", booking_id),
            lambda status: status == "scheduled",
            timeout=30,
            what="the valid booking after the dead letters is processed",
        )
        await watcher.settle(1.0)
        dead = [s for s in watcher.seen if s.topic == BOOKING_DLQ and s.key == booking_id]

    assert len(dead) == len(bad), "each bad record dead-lettered exactly once"
    for (expected_error, value), origin, letter in zip(bad.items(), sent, dead, strict=True):
        assert letter.type == "message.dead_lettered"
        data = letter.data
        assert data["service"] == "booking"
        assert (data["original_topic"], data["original_partition"], data["original_offset"]) == (
            UPSTREAM_BOOKINGS,
            origin.partition,
            origin.offset,
        )
        assert data["original_key"] == booking_id
        assert MessageDeadLettered.model_validate(data).original_value() == value  # the exact bytes
        assert expected_error in data["error"], data["error"]
    # The original is kept once: as text when it is UTF-8, else as base64.
    assert dead[0].data.get("original_value_text") is None and dead[0].data["original_value_base64"]
    assert [d.data["original_value_text"].encode() for d in dead[1:]] == list(bad.values())[1:]
    assert not any(d.data.get("original_value_base64") for d in dead[1:])

    view = booking.get_json(f"/bookings/{booking_id}")
    assert view["status"] == "scheduled"
    assert [e["action"] for e in view["audit_trail"]] == ["scheduled"]
    counts = await message_counts(booking)
    assert counts.get((UPSTREAM_BOOKINGS, "dead_lettered"), 0) >= len(bad)


async def stream_through_a_fault(infra, publisher, booking: ServiceProcess, fault) -> None:
    """~10 s of bookings and cancellations with `fault()` in the middle of it; then every
    request has its effect exactly once."""
    await wait_group(infra.bootstrap, "booking", members=1)
    booking_ids = [unique("bk") for _ in range(24)]
    practice_id = unique("practice")
    requests = {b: unique("req") for b in booking_ids}

    async def stream() -> None:
        for booking_id in booking_ids:
            await publisher.event(
                UPSTREAM_BOOKINGS,
                "booking.scheduled",
                booking_id,
                scheduled(booking_id, future(), practice_id=practice_id),
            )
            await publisher.event(
                UPSTREAM_BOOKINGS,
                "booking.cancellation_requested",
                booking_id,
                cancellation_requested(booking_id, requests[booking_id]),
            )
            await asyncio.sleep(0.4)

    async with EventWatcher(infra.bootstrap, WATCHED) as watcher:
        publishing = asyncio.create_task(stream())
        try:
            await watcher.wait_for(of_type("booking.cancelled", set(booking_ids)), count=2, timeout=30)
            await fault()
            await publishing
        finally:
            publishing.cancel()
        await assert_cancelled_once(infra, watcher, requests, timeout=90)


async def test_the_database_going_away_mid_stream_loses_nothing(infra, publisher, policy, bookings, service_logs):
    """The project's own server is stopped for 5 s and started again (infra/postgres.sh). A
    server the tests did not start is not theirs to stop: there, the services lose the database
    by having every connection cut for 5 s (pg_terminate_backend), as in the next test."""
    booking = await start_booking(infra, service_logs, bookings)
    local = postgres_is_local()

    async def outage() -> None:
        if local:
            await postgres("stop")
            try:
                await asyncio.sleep(5)
            finally:
                await postgres("start")
        else:
            await cut_connections(infra)

    await stream_through_a_fault(infra, publisher, booking, outage)
    if local:  # the consumer really met the outage (records arrived while it lasted) and waited
        assert await transient_retries(booking) > 0


async def cut_connections(infra) -> None:
    cut = await asyncio.gather(
        sever_connections(infra.admin_dsn, "booking", 5),
        sever_connections(infra.admin_dsn, "cancellation_policy", 5),
    )
    assert min(cut) > 0


async def test_connections_cut_mid_transaction_lose_nothing(infra, publisher, policy, bookings, service_logs):
    """Every connection of booking and cancellation-policy terminated by the server, again and
    again for 5 s: in the middle of a batch, between batches, idle in the pool. Whatever asyncpg
    raises for it, the batch is retried, never dead-lettered and never skipped."""
    booking = await start_booking(infra, service_logs, bookings)
    await stream_through_a_fault(infra, publisher, booking, lambda: cut_connections(infra))


async def test_two_replicas_in_one_group_keep_per_booking_order_even_when_one_dies(
    infra, publisher, policy, bookings, service_logs
):
    first = await start_booking(infra, service_logs, bookings)
    second = await start_booking(infra, service_logs, bookings)
    await wait_group(infra.bootstrap, "booking", members=2)
    booking_ids = [unique("bk") for _ in range(40)]
    practice_id = unique("practice")
    booked, moved = future(10), future(11)
    requests = {b: unique("req") for b in booking_ids}

    async def stream() -> None:  # ~4 s: scheduled -> rescheduled -> cancellation_requested, keyed by booking
        for i, booking_id in enumerate(booking_ids):
            await publisher.event(
                UPSTREAM_BOOKINGS,
                "booking.scheduled",
                booking_id,
                scheduled(booking_id, booked, practice_id=practice_id),
            )
            await publisher.event(UPSTREAM_BOOKINGS, "booking.rescheduled", booking_id, rescheduled(booking_id, moved))
            await publisher.event(
                UPSTREAM_BOOKINGS,
                "booking.cancellation_requested",
                booking_id,
                cancellation_requested(booking_id, requests[booking_id]),
            )
            if i % 4 == 3:
                await asyncio.sleep(0.4)

    async with EventWatcher(infra.bootstrap, WATCHED) as watcher:
        publishing = asyncio.create_task(stream())
        try:
            # Both replicas have work of this test; then one dies with its share half done, and
            # the other takes its partitions over from their last committed offsets.
            for replica in (first, second):
                await eventually(
                    lambda replica=replica: message_counts(replica),
                    lambda c: c.get((UPSTREAM_BOOKINGS, "processed"), 0) > 0,
                    timeout=30,
                    what="each replica processes part of the stream",
                )
            first.kill()
            await publishing
        finally:
            publishing.cancel()
        await assert_cancelled_once(
            infra,
            watcher,
            requests,
            timeout=90,
            trail=["scheduled", "rescheduled", "cancellation_requested", "cancellation_assessed", "cancelled"],
        )
        # The reschedule was applied before the cancellation, for every booking.
        for s in watcher.matching(of_type("booking.cancelled", set(booking_ids))):
            assert datetime.fromisoformat(s.data["starts_at"]) == moved, (s.key, s.data["starts_at"])
        for s in watcher.matching(of_type("cancellation.assessment_requested", set(booking_ids))):
            assert datetime.fromisoformat(s.data["booking"]["starts_at"]) == moved, (s.key, s.data["booking"])

"""The pms-sync service as a real process against real Kafka and Postgres: what reaches a
practice's PMS connector, how acks settle it, what happens when none comes, and what staff are
asked to do by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from helpers_faults import metric_samples
from shared.testing import EventWatcher, Publisher, ServiceProcess, dev_token, iso, unique, wait_for_row
from shared.topics import (
    BOOKING_EVENTS,
    PMS_INTEGRATION_TOPICS,
    PMS_SYNC_ACKS,
    PMS_SYNC_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
)

pytestmark = pytest.mark.integration

PRAKTIKA = PMS_INTEGRATION_TOPICS["praktika"]
CORE_PRACTICE = PMS_INTEGRATION_TOPICS["core_practice"]
ALL_TOPICS = [PRAKTIKA, CORE_PRACTICE, PMS_SYNC_EVENTS]

T_START = datetime(2031, 3, 10, 22, 0, tzinfo=UTC)
LATE_FEE = {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}


def start_pms_sync(infra: Any, log_dir: Any, **env: str) -> ServiceProcess:
    """A pms-sync replica in the shared consumer group. Tests that shorten its timings wait
    generously: another test's replica (default timings) may take the event instead."""
    return ServiceProcess("pms-sync", infra.bootstrap, infra.admin_dsn, log_dir, env=env).start()


@pytest.fixture
def pms_sync(infra: Any, log_dir: Any) -> Iterator[ServiceProcess]:
    service = start_pms_sync(infra, log_dir)
    try:
        yield service
    finally:
        service.stop()


async def configure(infra: Any, publisher: Publisher, practice_id: str, integration: str) -> None:
    await publisher.event(
        UPSTREAM_PRACTICES,
        "practice.configured",
        practice_id,
        {
            "practice_id": practice_id,
            "name": "Harbour Dental",
            "timezone": "Australia/Sydney",
            "locale": "en",
            "pms": {"integration": integration},
        },
    )
    await wait_for_row(
        infra.admin_dsn,
        "SELECT true FROM pms_sync.integrations WHERE practice_id = $1 AND integration = $2",
        practice_id,
        integration,
    )


async def request_cancellation(
    infra: Any, publisher: Publisher, booking_id: str, request_id: str, chart_note: str
) -> dict[str, Any]:
    actor = {"kind": "staff", "id": "staff-7", "roles": ["reception"]}
    # No booking.scheduled is published for these bookings: a booking service running beside
    # this test rejects the request (not_found) instead of acting on it.
    await publisher.event(
        UPSTREAM_BOOKINGS,
        "booking.cancellation_requested",
        booking_id,
        {
            "request_id": request_id,
            "booking_id": booking_id,
            "requested_at": iso(T_START - timedelta(hours=5)),
            "actor": actor,
            "channel": "practice",
            "reason_code": "illness",
            "reason_text": "Flu",
            "chart_note": chart_note,
        },
    )
    await wait_for_row(infra.admin_dsn, "SELECT true FROM pms_sync.requests WHERE request_id = $1", request_id)
    return actor


def booking_cancelled(
    booking_id: str, request_id: str, practice_id: str, actor: dict[str, Any], **overrides: Any
) -> dict[str, Any]:
    return {
        "booking_id": booking_id,
        "request_id": request_id,
        "practice_id": practice_id,
        "patient_id": unique("pat"),
        "practitioner_id": "dr-lee",
        "service_code": "D1110",
        "starts_at": iso(T_START),
        "ends_at": iso(T_START + timedelta(minutes=30)),
        "cancelled_at": iso(T_START - timedelta(hours=5)),
        "actor": actor,
        "channel": "practice",
        "status_label": "Cancelled",
        "reason_code": "illness",
        "reason_text": "Flu",
        "classification": "late",
        "decision": {
            "allowed": True,
            "classification": "late",
            "fee": LATE_FEE,
            "charge_card": False,
            "deposit_action": "none",
            "policy_version": "r1.s1",
        },
        "series_booking_ids": [],
    } | overrides


async def ack(publisher: Publisher, sync_id: str, booking_id: str, status: str, **extra: Any) -> None:
    await publisher.event(
        PMS_SYNC_ACKS,
        "pms.sync_acknowledged",
        booking_id,
        {"sync_id": sync_id, "booking_id": booking_id, "status": status, **extra},
        source="connector/test",
    )


def of(booking_id: str, type_: str) -> Any:
    return lambda s: s.type == type_ and s.data.get("booking_id") == booking_id


async def test_praktika_cancellation_is_synced_with_everything_and_completed_once(
    infra: Any, publisher: Publisher, pms_sync: ServiceProcess
) -> None:
    practice_id, booking_id, request_id = unique("prac"), unique("bk"), unique("req")
    await configure(infra, publisher, practice_id, "praktika")
    actor = await request_cancellation(
        infra, publisher, booking_id, request_id, chart_note="Pt called in sick; rebook in 2 wks"
    )
    async with EventWatcher(infra.bootstrap, ALL_TOPICS) as w:
        await publisher.event(
            BOOKING_EVENTS,
            "booking.cancelled",
            booking_id,
            booking_cancelled(booking_id, request_id, practice_id, actor),
        )
        [command] = await w.wait_for(of(booking_id, "pms.cancel_booking"))
        assert command.topic == PRAKTIKA and command.key == booking_id
        assert command.data == {
            "sync_id": command.data["sync_id"],
            "booking_id": booking_id,
            "practice_id": practice_id,
            "cancelled_at": "2031-03-10T17:00:00Z",
            "actor": actor,
            "classification": "late",
            "reason_code": "illness",
            "reason_text": "Flu",
            "status_label": "Cancelled",
            "fee": LATE_FEE,
            "chart_note": "Pt called in sick; rebook in 2 wks",
        }
        sync_id = command.data["sync_id"]

        await ack(publisher, sync_id, booking_id, "ok", external_ref="PRK-991")
        [completed] = await w.wait_for(of(booking_id, "pms.sync_completed"))
        assert completed.data == {
            "sync_id": sync_id,
            "booking_id": booking_id,
            "integration": "praktika",
            "attempts": 1,
        }

        await ack(publisher, sync_id, booking_id, "ok", external_ref="PRK-991")  # a connector's retry
        await w.settle(2.0)
        assert len(w.matching(of(booking_id, "pms.sync_completed"))) == 1
        assert len(w.matching(of(booking_id, "pms.cancel_booking"))) == 1
        assert w.matching(of(booking_id, "pms.manual_update_required")) == []

    [row] = pms_sync.get_json(f"/bookings/{booking_id}/syncs")["items"]
    assert (row["status"], row["attempts"], row["external_ref"]) == ("completed", 1, "PRK-991")


async def test_no_show_reaches_the_pms_with_reporter_and_chart_note(
    infra: Any, publisher: Publisher, pms_sync: ServiceProcess
) -> None:
    practice_id, booking_id, request_id = unique("prac"), unique("bk"), unique("req")
    await configure(infra, publisher, practice_id, "core_practice")
    reporter = {"kind": "staff", "id": "staff-3", "roles": ["manager"]}
    await publisher.event(
        UPSTREAM_BOOKINGS,
        "booking.no_show_reported",
        booking_id,
        {
            "request_id": request_id,
            "booking_id": booking_id,
            "reported_at": iso(T_START + timedelta(minutes=20)),
            "actor": reporter,
            "party": "patient",
            "code": "FTA",
            "chart_note": "No answer on phone",
        },
    )
    await wait_for_row(infra.admin_dsn, "SELECT true FROM pms_sync.requests WHERE request_id = $1", request_id)
    async with EventWatcher(infra.bootstrap, ALL_TOPICS) as w:
        await publisher.event(
            BOOKING_EVENTS,
            "booking.no_show_recorded",
            booking_id,
            {
                "booking_id": booking_id,
                "request_id": request_id,
                "practice_id": practice_id,
                "patient_id": unique("pat"),
                "party": "patient",
                "code": "FTA",
                "starts_at": iso(T_START),
                "recorded_at": iso(T_START + timedelta(minutes=20)),
                "decision": {
                    "allowed": True,
                    "classification": "no_show",
                    "charge_card": False,
                    "deposit_action": "none",
                    "policy_version": "r1.s1",
                },
            },
        )
        [command] = await w.wait_for(of(booking_id, "pms.record_no_show"))
        assert command.topic == CORE_PRACTICE
        assert command.data["actor"] == reporter
        assert command.data["chart_note"] == "No answer on phone"
        assert (command.data["code"], command.data["recorded_at"]) == ("FTA", "2031-03-10T22:20:00Z")


async def test_manual_practice_is_asked_to_update_its_pms(
    infra: Any, publisher: Publisher, pms_sync: ServiceProcess
) -> None:
    practice_id, booking_id, request_id = unique("prac"), unique("bk"), unique("req")
    await configure(infra, publisher, practice_id, "manual")
    actor = {"kind": "staff", "id": "staff-7", "roles": []}
    async with EventWatcher(infra.bootstrap, ALL_TOPICS) as w:
        await publisher.event(
            BOOKING_EVENTS,
            "booking.cancelled",
            booking_id,
            booking_cancelled(booking_id, request_id, practice_id, actor),
        )
        [manual] = await w.wait_for(of(booking_id, "pms.manual_update_required"))
        assert manual.data == {
            "booking_id": booking_id,
            "practice_id": practice_id,
            "integration": "manual",
            "action": "cancel_booking",
            "message": "Manual update required: cancel this booking in your PMS too",
        }
        await w.settle(1.0)
        assert (
            w.matching(lambda s: s.topic in (PRAKTIKA, CORE_PRACTICE) and s.data.get("booking_id") == booking_id) == []
        )

    [update] = pms_sync.get_json(f"/practices/{practice_id}/manual-updates")["items"]
    assert (update["booking_id"], update["action"], update["sync_id"]) == (booking_id, "cancel_booking", None)


async def test_error_ack_fails_the_sync_and_asks_for_a_manual_update(
    infra: Any, publisher: Publisher, pms_sync: ServiceProcess
) -> None:
    practice_id, booking_id, request_id = unique("prac"), unique("bk"), unique("req")
    await configure(infra, publisher, practice_id, "core_practice")
    actor = await request_cancellation(infra, publisher, booking_id, request_id, chart_note="Asked to be called back")
    async with EventWatcher(infra.bootstrap, ALL_TOPICS) as w:
        await publisher.event(
            BOOKING_EVENTS,
            "booking.cancelled",
            booking_id,
            booking_cancelled(booking_id, request_id, practice_id, actor),
        )
        [command] = await w.wait_for(of(booking_id, "pms.cancel_booking"))
        assert command.topic == CORE_PRACTICE
        sync_id = command.data["sync_id"]

        await ack(publisher, sync_id, booking_id, "error", error="appointment locked by another user")
        [failed] = await w.wait_for(of(booking_id, "pms.sync_failed"))
        assert failed.data == {
            "sync_id": sync_id,
            "booking_id": booking_id,
            "integration": "core_practice",
            "attempts": 1,
            "error": "appointment locked by another user",
        }
        [manual] = await w.wait_for(of(booking_id, "pms.manual_update_required"))
        assert manual.data == {
            "booking_id": booking_id,
            "practice_id": practice_id,
            "integration": "core_practice",
            "action": "cancel_booking",
            "message": "Manual update required: cancel this booking in Core Practice too "
            "(Core Practice did not confirm it: appointment locked by another user)",
        }

        await ack(publisher, sync_id, booking_id, "ok")  # too late: the practice was already asked
        await w.settle(2.0)
        assert w.matching(of(booking_id, "pms.sync_completed")) == []
        assert len(w.matching(of(booking_id, "pms.manual_update_required"))) == 1
        assert len(w.matching(of(booking_id, "pms.sync_failed"))) == 1

    [row] = pms_sync.get_json(f"/bookings/{booking_id}/syncs")["items"]
    assert (row["status"], row["error"]) == ("failed", "appointment locked by another user")
    [update] = pms_sync.get_json(f"/practices/{practice_id}/manual-updates")["items"]
    assert (update["booking_id"], update["sync_id"], update["integration"]) == (booking_id, sync_id, "core_practice")

    # The read API answers the practice's own token (and ops), another practice's as if there were
    # nothing, and nobody without a token.
    own = dev_token(practice_ids=[practice_id], roles=["receptionist"])
    other = dev_token(practice_ids=[unique("prac")], roles=["owner"])
    for path in (f"/bookings/{booking_id}/syncs", f"/practices/{practice_id}/manual-updates"):
        assert [pms_sync.get_status(path, token) for token in (None, other, own)] == [401, 404, 200]
    [row] = pms_sync.get_json(f"/bookings/{booking_id}/syncs", token=own)["items"]
    assert row["sync_id"] == sync_id and "command" not in row  # the command may hold a chart note
    page = pms_sync.get_json(f"/practices/{practice_id}/manual-updates?page=1&page_size=1", token=own)
    assert (page["practice_id"], page["page"], page["page_size"], len(page["items"])) == (practice_id, 1, 1, 1)
    assert pms_sync.get_json(f"/practices/{practice_id}/manual-updates?page=2", token=own)["items"] == []
    assert pms_sync.get_status(f"/bookings/{unique('bk')}/syncs", dev_token(roles=["ops"])) == 404
    assert pms_sync.get_status("/bookings/not%20an%20id/syncs", own) == 422
    assert pms_sync.get_status(f"/practices/{practice_id}/manual-updates?page_size=0", own) == 422


async def test_unacknowledged_sync_is_resent_with_the_same_id_then_failed(
    infra: Any, publisher: Publisher, log_dir: Any
) -> None:
    """A connector that never answers. Two replicas run the clock: each due time is acted on once."""
    practice_id, booking_id, request_id = unique("prac"), unique("bk"), unique("req")
    timings = {"PMS_ACK_TIMEOUT_SECONDS": "2", "PMS_MAX_ATTEMPTS": "2", "PMS_RETRY_POLL_SECONDS": "0.1"}
    service = start_pms_sync(infra, log_dir, **timings)
    replica = start_pms_sync(infra, log_dir, **timings)
    try:
        await configure(infra, publisher, practice_id, "praktika")
        actor = await request_cancellation(infra, publisher, booking_id, request_id, chart_note="n")
        async with EventWatcher(infra.bootstrap, ALL_TOPICS) as w:
            await publisher.event(
                BOOKING_EVENTS,
                "booking.cancelled",
                booking_id,
                booking_cancelled(booking_id, request_id, practice_id, actor),
            )
            await w.wait_for(of(booking_id, "pms.cancel_booking"), timeout=90)
            # Sent and not acknowledged: the scrape reads it into the PMS backlog.
            backlog = {
                labels["integration"]: value
                for labels, value in await metric_samples(service, "cancellations_pms_backlog")
            }
            assert backlog.keys() == {"praktika", "core_practice"} and backlog["praktika"] >= 1, backlog
            [(_, oldest)] = await metric_samples(service, "cancellations_pms_backlog_oldest_seconds")
            assert oldest > 0
            sends = await w.wait_for(of(booking_id, "pms.cancel_booking"), count=2, timeout=90)
            assert len({s.data["sync_id"] for s in sends}) == 1
            assert sends[0].data == sends[1].data  # the same command, unchanged
            assert sends[0].value["id"] != sends[1].value["id"]  # a new envelope each time

            [failed] = await w.wait_for(of(booking_id, "pms.sync_failed"), timeout=90)
            assert failed.data["attempts"] == 2
            assert failed.data["error"] == "no acknowledgement after 2 attempts"
            [manual] = await w.wait_for(of(booking_id, "pms.manual_update_required"))
            assert manual.data["message"] == (
                "Manual update required: cancel this booking in Praktika too "
                "(Praktika did not confirm it: no acknowledgement after 2 attempts)"
            )
            await ack(publisher, failed.data["sync_id"], booking_id, "ok")  # the connector woke up: too late
            await w.settle(2.5)
            assert len(w.matching(of(booking_id, "pms.cancel_booking"))) == 2
            assert len(w.matching(of(booking_id, "pms.sync_failed"))) == 1
            assert w.matching(of(booking_id, "pms.sync_completed")) == []

        [row] = service.get_json(f"/bookings/{booking_id}/syncs")["items"]
        assert (row["status"], row["attempts"]) == ("failed", 2)
        assert len(replica.get_json(f"/practices/{practice_id}/manual-updates")["items"]) == 1
    finally:
        replica.stop()
        service.stop()


@pytest.mark.parametrize("configured", [True, False])
async def test_practice_without_integration_gets_nothing(
    infra: Any, publisher: Publisher, pms_sync: ServiceProcess, configured: bool
) -> None:
    """`none` (or never configured: the contract's default): the cancellation is complete on submit."""
    practice_id, booking_id, request_id = unique("prac"), unique("bk"), unique("req")
    if configured:
        await configure(infra, publisher, practice_id, "none")
    actor = await request_cancellation(infra, publisher, booking_id, request_id, chart_note="n")
    async with EventWatcher(infra.bootstrap, ALL_TOPICS) as w:
        event = await publisher.event(
            BOOKING_EVENTS,
            "booking.cancelled",
            booking_id,
            booking_cancelled(booking_id, request_id, practice_id, actor),
        )
        # Processed (its id is in the inbox); then nothing may follow.
        await wait_for_row(infra.admin_dsn, "SELECT true FROM pms_sync.inbox WHERE event_id = $1", event["id"])
        await w.settle(2.0)
        assert w.matching(lambda s: s.data.get("booking_id") == booking_id) == []
    # Never synced: this service does not know the booking.
    assert pms_sync.get_status(f"/bookings/{booking_id}/syncs", dev_token(roles=["ops"])) == 404
    assert pms_sync.get_json(f"/practices/{practice_id}/manual-updates")["items"] == []


async def test_a_series_is_synced_one_command_per_booking_with_the_fee_on_the_cancelled_one(
    infra: Any, publisher: Publisher, pms_sync: ServiceProcess
) -> None:
    practice_id, booking_id, request_id = unique("prac"), unique("bk"), unique("req")
    later = [unique("bk"), unique("bk")]
    await configure(infra, publisher, practice_id, "praktika")
    actor = await request_cancellation(infra, publisher, booking_id, request_id, chart_note="Moving interstate")
    async with EventWatcher(infra.bootstrap, ALL_TOPICS) as w:
        await publisher.event(
            BOOKING_EVENTS,
            "booking.cancelled",
            booking_id,
            booking_cancelled(booking_id, request_id, practice_id, actor, series_booking_ids=later),
        )
        commands = {}
        for b in [booking_id, *later]:
            [commands[b]] = await w.wait_for(of(b, "pms.cancel_booking"))
        assert len({c.data["sync_id"] for c in commands.values()}) == 3
        assert all(c.key == c.data["booking_id"] and c.topic == PRAKTIKA for c in commands.values())
        assert (commands[booking_id].data["classification"], commands[booking_id].data["fee"]) == ("late", LATE_FEE)
        for b in later:
            assert commands[b].data["classification"] == "timely" and "fee" not in commands[b].data
            assert commands[b].data["chart_note"] == "Moving interstate"


async def test_a_cancellation_read_before_its_request_waits_for_the_chart_note(
    infra: Any, publisher: Publisher, pms_sync: ServiceProcess
) -> None:
    """booking.events.v1 and upstream.bookings.v1 are consumed independently: when the
    cancellation is read first, its command waits for the request rather than lose the note."""
    practice_id, booking_id, request_id = unique("prac"), unique("bk"), unique("req")
    await configure(infra, publisher, practice_id, "praktika")
    actor = {"kind": "staff", "id": "staff-7", "roles": ["reception"]}
    async with EventWatcher(infra.bootstrap, ALL_TOPICS) as w:
        await publisher.event(
            BOOKING_EVENTS,
            "booking.cancelled",
            booking_id,
            booking_cancelled(booking_id, request_id, practice_id, actor),
        )
        await wait_for_row(
            infra.admin_dsn, "SELECT true FROM pms_sync.syncs WHERE booking_id = $1 AND status = 'waiting'", booking_id
        )
        assert w.matching(of(booking_id, "pms.cancel_booking")) == []
        await request_cancellation(infra, publisher, booking_id, request_id, chart_note="Pt called in sick")
        [command] = await w.wait_for(of(booking_id, "pms.cancel_booking"))
        assert command.data["chart_note"] == "Pt called in sick"
        assert command.data["actor"] == actor and command.data["fee"] == LATE_FEE
        await ack(publisher, command.data["sync_id"], booking_id, "ok")
        [completed] = await w.wait_for(of(booking_id, "pms.sync_completed"))
        assert completed.data["attempts"] == 1
        await w.settle(1.0)
        assert len(w.matching(of(booking_id, "pms.cancel_booking"))) == 1


async def test_a_command_waits_for_its_request_only_so_long(infra: Any, publisher: Publisher, log_dir: Any) -> None:
    practice_id, booking_id, request_id = unique("prac"), unique("bk"), unique("req")
    service = start_pms_sync(infra, log_dir, PMS_REQUEST_WAIT_SECONDS="1", PMS_RETRY_POLL_SECONDS="0.2")
    try:
        await configure(infra, publisher, practice_id, "core_practice")
        async with EventWatcher(infra.bootstrap, ALL_TOPICS) as w:
            no_show = {
                "booking_id": booking_id,
                "request_id": request_id,
                "practice_id": practice_id,
                "patient_id": unique("pat"),
                "party": "patient",
                "code": "DNA",
                "starts_at": iso(T_START),
                "recorded_at": iso(T_START + timedelta(minutes=20)),
                "decision": {
                    "allowed": True,
                    "classification": "no_show",
                    "fee": LATE_FEE,
                    "charge_card": False,
                    "deposit_action": "none",
                    "policy_version": "r1.s1",
                },
            }
            await publisher.event(BOOKING_EVENTS, "booking.no_show_recorded", booking_id, no_show)
            [command] = await w.wait_for(of(booking_id, "pms.record_no_show"), timeout=90)
            # No report came: sent without a chart note, the booking service named as reporter.
            assert "chart_note" not in command.data
            assert command.data["actor"] == {"kind": "system", "id": "service/booking", "roles": []}
            assert command.data["fee"] == LATE_FEE
        [row] = service.get_json(f"/bookings/{booking_id}/syncs")["items"]
        assert (row["status"], row["attempts"]) == ("sent", 1)
    finally:
        service.stop()


async def test_a_late_ack_after_a_resend_completes_the_sync_once(
    infra: Any, publisher: Publisher, log_dir: Any
) -> None:
    """The connector was slow: its ack of the first send arrives after the second went out."""
    practice_id, booking_id, request_id = unique("prac"), unique("bk"), unique("req")
    service = start_pms_sync(
        infra, log_dir, PMS_ACK_TIMEOUT_SECONDS="2", PMS_MAX_ATTEMPTS="3", PMS_RETRY_POLL_SECONDS="0.2"
    )
    try:
        await configure(infra, publisher, practice_id, "praktika")
        actor = await request_cancellation(infra, publisher, booking_id, request_id, chart_note="n")
        async with EventWatcher(infra.bootstrap, ALL_TOPICS) as w:
            await publisher.event(
                BOOKING_EVENTS,
                "booking.cancelled",
                booking_id,
                booking_cancelled(booking_id, request_id, practice_id, actor),
            )
            sends = await w.wait_for(of(booking_id, "pms.cancel_booking"), count=2, timeout=90)
            sync_id = sends[0].data["sync_id"]
            await ack(publisher, sync_id, booking_id, "ok", external_ref="PRK-1")  # for the first send
            await ack(publisher, sync_id, booking_id, "ok", external_ref="PRK-1")  # and for the second
            [completed] = await w.wait_for(of(booking_id, "pms.sync_completed"))
            assert completed.data["sync_id"] == sync_id and completed.data["attempts"] >= 2
            await w.settle(5.0)  # past the third send's due time: none goes out
            assert len(w.matching(of(booking_id, "pms.sync_completed"))) == 1
            assert len(w.matching(of(booking_id, "pms.cancel_booking"))) == completed.data["attempts"]
            assert w.matching(of(booking_id, "pms.sync_failed")) == []
            assert w.matching(of(booking_id, "pms.manual_update_required")) == []
        [row] = service.get_json(f"/bookings/{booking_id}/syncs")["items"]
        assert (row["status"], row["external_ref"], row["next_retry_at"]) == ("completed", "PRK-1", None)
    finally:
        service.stop()

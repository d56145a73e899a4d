"""pms-sync's handlers against a fake of their repository: what each integration gets (none,
manual, a connector's topic), a command that waits for its request's chart note, how acks
settle a sync (ok, error, late, unknown), and what staff are asked to do by hand. No database,
no broker, milliseconds each.

The commands and messages themselves are tables in tests/unit/test_pms_sync_domain.py; resends,
the SQL and the broker are tests/integration/test_pms_sync_service.py.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pms_sync import domain, handlers, repository
from pms_sync.handlers import PmsSyncDeps
from pms_sync.settings import PmsSyncSettings
from shared.consumer import Unit
from shared.contracts.base import Payload
from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.upstream import (
    BookingCancellationRequested,
    BookingNoShowReported,
    PmsSyncAcknowledged,
    PracticeConfigured,
)
from shared.testing import assert_same_functions
from shared.topics import (
    BOOKING_EVENTS,
    PMS_INTEGRATION_TOPICS,
    PMS_SYNC_ACKS,
    PMS_SYNC_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
)

T = datetime(2031, 3, 10, 22, 0, tzinfo=UTC)
PRACTICE = "prac-1"
BOOKING = "bk-1"
REQUEST = "req-1"
PRAKTIKA = PMS_INTEGRATION_TOPICS["praktika"]
STAFF = {"kind": "staff", "id": "staff-7", "roles": ["reception"]}
NURSE = {"kind": "staff", "id": "nurse-3", "roles": ["clinician"]}
SETTINGS = PmsSyncSettings(pms_ack_timeout_seconds=60.0, pms_request_wait_seconds=30.0)

TOPICS = {
    PracticeConfigured: UPSTREAM_PRACTICES,
    BookingCancellationRequested: UPSTREAM_BOOKINGS,
    BookingNoShowReported: UPSTREAM_BOOKINGS,
    BookingCancelled: BOOKING_EVENTS,
    BookingNoShowRecorded: BOOKING_EVENTS,
    PmsSyncAcknowledged: PMS_SYNC_ACKS,
}


# --- the fake ----------------------------------------------------------------------------------------

SYNC_COLUMNS = (
    "sync_id booking_id practice_id request_id integration action topic command correlation_id status attempts"
    " next_retry_in error external_ref"
)


class FakeRepository:
    """The functions of pms_sync/repository.py the handlers call, with the same names, arguments
    and results, over dicts; the connection argument is ignored. JSON columns come back as text,
    as the SQL returns them (`actor::text`, `command::text`); a time to wait is kept as the
    seconds from now (`next_retry_in`) that the SQL adds to `now()`."""

    def __init__(self) -> None:
        self.integrations: dict[str, dict[str, Any]] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        self.syncs: dict[str, dict[str, Any]] = {}
        self.manual_updates: list[dict[str, Any]] = []

    async def configure_integration(
        self, conn: Any, practice_id: str, integration: str, configured_at: datetime
    ) -> None:
        known = self.integrations.get(practice_id)
        if known is None or known["configured_at"] <= configured_at:
            self.integrations[practice_id] = {"integration": integration, "configured_at": configured_at}

    async def integration_of(self, conn: Any, practice_id: str) -> str | None:
        known = self.integrations.get(practice_id)
        return known["integration"] if known else None

    async def remember_request(
        self, conn: Any, request_id: str, booking_id: str, kind: str, actor: dict[str, Any], chart_note: str | None
    ) -> None:
        self.requests.setdefault(
            request_id,
            {
                "request_id": request_id,
                "booking_id": booking_id,
                "kind": kind,
                "actor": json.dumps(actor),
                "chart_note": chart_note,
            },
        )

    async def get_request(self, conn: Any, request_id: str) -> dict[str, Any] | None:
        request = self.requests.get(request_id)
        return dict(request) if request else None

    async def add_sync(
        self,
        conn: Any,
        *,
        sync_id: str,
        booking_id: str,
        practice_id: str,
        request_id: str,
        integration: str,
        action: str,
        topic: str,
        command: dict[str, Any],
        correlation_id: str | None,
        waiting: bool,
        wait_seconds: float,
    ) -> bool:
        if sync_id in self.syncs:
            return False
        self.syncs[sync_id] = {
            "sync_id": sync_id,
            "booking_id": booking_id,
            "practice_id": practice_id,
            "request_id": request_id,
            "integration": integration,
            "action": action,
            "topic": topic,
            "command": json.dumps(command),
            "correlation_id": correlation_id,
            "status": "waiting" if waiting else "sent",
            "attempts": 0 if waiting else 1,
            "next_retry_in": wait_seconds,
            "error": None,
            "external_ref": None,
        }
        return True

    def _row(self, sync: dict[str, Any]) -> dict[str, Any]:
        return {c: sync[c] for c in SYNC_COLUMNS.split()}

    async def lock_sync(self, conn: Any, sync_id: str) -> dict[str, Any] | None:
        sync = self.syncs.get(sync_id)
        return self._row(sync) if sync else None

    async def lock_waiting_syncs(self, conn: Any, request_id: str) -> list[dict[str, Any]]:
        waiting = [s for s in self.syncs.values() if s["request_id"] == request_id and s["status"] == "waiting"]
        return [self._row(s) for s in sorted(waiting, key=lambda s: s["booking_id"])]

    async def mark_first_sent(self, conn: Any, sync_id: str, command: dict[str, Any], ack_wait_seconds: float) -> None:
        self.syncs[sync_id] |= {
            "command": json.dumps(command),
            "status": "sent",
            "attempts": 1,
            "next_retry_in": ack_wait_seconds,
        }

    async def complete_sync(self, conn: Any, sync_id: str, external_ref: str | None) -> None:
        self.syncs[sync_id] |= {"status": "completed", "external_ref": external_ref, "next_retry_in": None}

    async def fail_sync(self, conn: Any, sync_id: str, error: str) -> None:
        self.syncs[sync_id] |= {"status": "failed", "error": error, "next_retry_in": None}

    async def add_manual_update(
        self,
        conn: Any,
        *,
        booking_id: str,
        practice_id: str,
        integration: str,
        action: str,
        message: str,
        sync_id: str | None,
    ) -> None:
        self.manual_updates.append(
            {
                "booking_id": booking_id,
                "practice_id": practice_id,
                "integration": integration,
                "action": action,
                "message": message,
                "sync_id": sync_id,
            }
        )


def test_the_fake_takes_what_repository_py_takes() -> None:
    assert_same_functions(FakeRepository(), repository)


@pytest.fixture
def repo() -> FakeRepository:
    return FakeRepository()


Handle = Callable[..., Awaitable[list[tuple[str, str, str, dict[str, Any]]]]]


@pytest.fixture
def handle(unit_for: Callable[..., Unit[Any]], repo: FakeRepository) -> Handle:
    """`await handle(handler, payload, **envelope)`: the payload parsed as the consumer would, on
    its topic, handed to `handler` in a unit of its own; returns what it published, as
    (topic, key, type, data)."""

    async def handle(
        handler: Callable[..., Awaitable[None]], payload: Payload, **envelope: Any
    ) -> list[tuple[str, str, str, dict[str, Any]]]:
        unit = unit_for(
            "pms-sync", PmsSyncDeps(settings=SETTINGS, repository=repo), TOPICS[type(payload)], payload, **envelope
        )
        await handler(unit, unit.event.payload)
        for event in unit.emitted:  # every event carries the causing event's correlation id
            assert event.envelope.get("correlationid") == unit.event.correlation_id
        return [(e.topic, e.key, e.envelope["type"], e.envelope["data"]) for e in unit.emitted]

    return handle


# --- the events --------------------------------------------------------------------------------------


def configured(integration: str) -> PracticeConfigured:
    return PracticeConfigured.new(
        practice_id=PRACTICE,
        name="Harbour Dental",
        timezone="Australia/Sydney",
        locale="en",
        pms={"integration": integration},
    )


def requested(
    request_id: str = REQUEST, chart_note: str | None = "Patient has flu; rebook in 2 weeks"
) -> BookingCancellationRequested:
    return BookingCancellationRequested.new(
        request_id=request_id,
        booking_id=BOOKING,
        requested_at=T - timedelta(hours=5),
        actor=STAFF,
        channel="practice",
        reason_code="illness",
        chart_note=chart_note,
    )


def cancelled(**overrides: Any) -> BookingCancelled:
    fields: dict[str, Any] = {
        "booking_id": BOOKING,
        "request_id": REQUEST,
        "practice_id": PRACTICE,
        "patient_id": "pat-1",
        "practitioner_id": "dr-lee",
        "service_code": "D1110",
        "starts_at": T,
        "ends_at": T + timedelta(minutes=30),
        "cancelled_at": T - timedelta(hours=5),
        "actor": STAFF,
        "channel": "practice",
        "status_label": "Cancelled",
        "reason_code": "illness",
        "classification": "late",
        "decision": {
            "allowed": True,
            "classification": "late",
            "charge_card": False,
            "deposit_action": "none",
            "policy_version": "r1.s1",
            "fee": {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"},
        },
    }
    return BookingCancelled.new(**(fields | overrides))


def no_show_reported() -> BookingNoShowReported:
    return BookingNoShowReported.new(
        request_id="req-ns",
        booking_id=BOOKING,
        reported_at=T + timedelta(minutes=20),
        actor=NURSE,
        party="patient",
        code="DNA",
        chart_note="Did not answer two calls",
    )


def no_show_recorded() -> BookingNoShowRecorded:
    return BookingNoShowRecorded.new(
        booking_id=BOOKING,
        request_id="req-ns",
        practice_id=PRACTICE,
        patient_id="pat-1",
        party="patient",
        code="DNA",
        starts_at=T,
        recorded_at=T + timedelta(minutes=20),
        decision={
            "allowed": True,
            "classification": "no_show",
            "charge_card": False,
            "deposit_action": "none",
            "policy_version": "r1.s1",
        },
    )


def ack(status: str, sync_id: str | None = None, **extra: Any) -> PmsSyncAcknowledged:
    return PmsSyncAcknowledged.new(
        sync_id=sync_id or domain.sync_id(BOOKING, REQUEST), booking_id=BOOKING, status=status, **extra
    )


async def sent_to_praktika(handle: Handle) -> dict[str, Any]:
    """A cancellation sent to Praktika (its request read first); returns the command."""
    await handle(handlers.configure_practice, configured("praktika"))
    await handle(handlers.remember_cancellation_request, requested())
    [(_, _, _, command)] = await handle(handlers.sync_cancellation, cancelled())
    return command


# --- where a change goes -----------------------------------------------------------------------------


@pytest.mark.parametrize("integration", [None, "none"])
async def test_a_practice_without_an_integration_gets_nothing(
    handle: Handle, repo: FakeRepository, integration: str | None
) -> None:
    if integration:
        await handle(handlers.configure_practice, configured(integration))
    await handle(handlers.remember_cancellation_request, requested())
    assert await handle(handlers.sync_cancellation, cancelled(series_booking_ids=["bk-2"])) == []
    assert await handle(handlers.sync_no_show, no_show_recorded()) == []
    assert (repo.syncs, repo.manual_updates) == ({}, [])


@pytest.mark.parametrize(
    ("handler", "payload", "what"),
    [
        (handlers.sync_cancellation, cancelled(series_booking_ids=["bk-2", "bk-3"]), "cancel this booking"),
        (handlers.sync_no_show, no_show_recorded(), "record this no-show"),
    ],
)
async def test_a_manual_practice_is_asked_by_hand_for_each_booking_naming_no_pms_it_never_named(
    handle: Handle, repo: FakeRepository, handler: Any, payload: Payload, what: str
) -> None:
    await handle(handlers.configure_practice, configured("manual"))
    published = await handle(handler, payload)

    bookings = [BOOKING, *getattr(payload, "series_booking_ids", [])]
    assert [(topic, key, type_) for topic, key, type_, _ in published] == [
        (PMS_SYNC_EVENTS, b, "pms.manual_update_required") for b in bookings
    ]
    for _, _, _, data in published:
        assert data["message"] == f"Manual update required: {what} in your PMS too"
        assert (data["practice_id"], data["integration"]) == (PRACTICE, "manual")
    assert [(m["booking_id"], m["sync_id"]) for m in repo.manual_updates] == [(b, None) for b in bookings]
    assert repo.syncs == {}


@pytest.mark.parametrize("integration", ["praktika", "core_practice"])
async def test_a_connected_practice_gets_the_command_on_its_integrations_topic_with_the_chart_note(
    handle: Handle, repo: FakeRepository, integration: str
) -> None:
    await handle(handlers.configure_practice, configured(integration))
    assert await handle(handlers.remember_cancellation_request, requested()) == []  # nothing was waiting for it
    [(topic, key, type_, command)] = await handle(handlers.sync_cancellation, cancelled(), correlation_id="corr-1")

    assert (topic, key, type_) == (PMS_INTEGRATION_TOPICS[integration], BOOKING, "pms.cancel_booking")
    assert command["chart_note"] == "Patient has flu; rebook in 2 weeks"
    assert command["fee"]["amount"] == "45.00" and command["actor"] == STAFF
    sync = repo.syncs[command["sync_id"]]
    assert (sync["status"], sync["attempts"], sync["integration"], sync["correlation_id"]) == (
        "sent",
        1,
        integration,
        "corr-1",
    )
    assert SETTINGS.pms_ack_timeout_seconds / 2 <= sync["next_retry_in"] <= SETTINGS.pms_ack_timeout_seconds
    assert json.loads(sync["command"]) == command  # what a resend sends again


async def test_a_replayed_cancellation_is_the_same_sync_and_is_sent_once(handle: Handle, repo: FakeRepository) -> None:
    await sent_to_praktika(handle)
    assert await handle(handlers.sync_cancellation, cancelled()) == []  # a new envelope, the same change
    assert len(repo.syncs) == 1


# --- a command waits for its request -----------------------------------------------------------------


async def test_a_cancellation_read_before_its_request_waits_for_the_chart_note(
    handle: Handle, repo: FakeRepository
) -> None:
    await handle(handlers.configure_practice, configured("praktika"))
    assert (
        await handle(handlers.sync_cancellation, cancelled(series_booking_ids=["bk-2"]), correlation_id="corr-1") == []
    )
    assert {(s["booking_id"], s["status"], s["attempts"], s["next_retry_in"]) for s in repo.syncs.values()} == {
        (BOOKING, "waiting", 0, SETTINGS.pms_request_wait_seconds),
        ("bk-2", "waiting", 0, SETTINGS.pms_request_wait_seconds),
    }

    published = await handle(handlers.remember_cancellation_request, requested())

    assert [(topic, key) for topic, key, _, _ in published] == [(PRAKTIKA, BOOKING), (PRAKTIKA, "bk-2")]
    assert {data["chart_note"] for _, _, _, data in published} == {"Patient has flu; rebook in 2 weeks"}
    for _, _, _, data in published:
        sync = repo.syncs[data["sync_id"]]
        assert (sync["status"], sync["attempts"]) == ("sent", 1)
        assert json.loads(sync["command"]) == data  # the stored command is the completed one
    # The request again (a replay): nothing is waiting any more, nothing is sent twice.
    assert await handle(handlers.remember_cancellation_request, requested()) == []


async def test_a_no_show_read_before_its_report_waits_for_the_reporter_and_the_chart_note(
    handle: Handle, repo: FakeRepository
) -> None:
    await handle(handlers.configure_practice, configured("praktika"))
    assert await handle(handlers.sync_no_show, no_show_recorded()) == []

    [(topic, _, type_, command)] = await handle(handlers.remember_no_show_report, no_show_reported())

    assert (topic, type_) == (PRAKTIKA, "pms.record_no_show")
    assert (command["actor"], command["chart_note"]) == (NURSE, "Did not answer two calls")


async def test_a_cancellation_on_the_system_channel_never_waits(handle: Handle, repo: FakeRepository) -> None:
    """The booking service cancels a suspended professional's bookings itself: no request will come."""
    await handle(handlers.configure_practice, configured("praktika"))
    system = {"kind": "system", "id": "service/booking", "roles": []}
    [(_, _, _, command)] = await handle(handlers.sync_cancellation, cancelled(actor=system, channel="system"))

    assert "chart_note" not in command and repo.syncs[command["sync_id"]]["status"] == "sent"


# --- acknowledgements --------------------------------------------------------------------------------


async def test_an_ok_ack_completes_the_sync_once(handle: Handle, repo: FakeRepository) -> None:
    command = await sent_to_praktika(handle)
    [(topic, key, type_, data)] = await handle(handlers.acknowledge_sync, ack("ok", external_ref="PRK-991"))

    assert (topic, key, type_) == (PMS_SYNC_EVENTS, BOOKING, "pms.sync_completed")
    assert data == {"sync_id": command["sync_id"], "booking_id": BOOKING, "integration": "praktika", "attempts": 1}
    assert (repo.syncs[command["sync_id"]]["status"], repo.syncs[command["sync_id"]]["external_ref"]) == (
        "completed",
        "PRK-991",
    )

    assert await handle(handlers.acknowledge_sync, ack("ok")) == []  # the connector said it again


@pytest.mark.parametrize(
    ("error", "why"),
    [
        ("Appointment 881 is locked", "Praktika did not confirm it: Appointment 881 is locked"),
        (None, "Praktika did not confirm it: the PMS connector reported an error"),
    ],
)
async def test_an_error_ack_fails_the_sync_and_asks_for_the_update_by_hand_naming_the_pms(
    handle: Handle, repo: FakeRepository, error: str | None, why: str
) -> None:
    command = await sent_to_praktika(handle)
    published = await handle(handlers.acknowledge_sync, ack("error", error=error))

    assert [(topic, key, type_) for topic, key, type_, _ in published] == [
        (PMS_SYNC_EVENTS, BOOKING, "pms.sync_failed"),
        (PMS_SYNC_EVENTS, BOOKING, "pms.manual_update_required"),
    ]
    failed, manual = published[0][3], published[1][3]
    assert (failed["sync_id"], failed["attempts"]) == (command["sync_id"], 1)
    assert manual["message"] == f"Manual update required: cancel this booking in Praktika too ({why})"
    assert repo.syncs[command["sync_id"]]["status"] == "failed"
    assert [(m["message"], m["sync_id"]) for m in repo.manual_updates] == [(manual["message"], command["sync_id"])]


@pytest.mark.parametrize(("first", "late"), [("error", "ok"), ("ok", "error"), ("error", "error")])
async def test_a_late_ack_after_the_sync_ended_changes_nothing(
    handle: Handle, repo: FakeRepository, first: str, late: str
) -> None:
    command = await sent_to_praktika(handle)
    await handle(handlers.acknowledge_sync, ack(first, error="locked" if first == "error" else None))
    ended = dict(repo.syncs[command["sync_id"]]), list(repo.manual_updates)

    assert await handle(handlers.acknowledge_sync, ack(late, error="locked" if late == "error" else None)) == []
    assert (repo.syncs[command["sync_id"]], repo.manual_updates) == ended


async def test_an_ack_of_a_sync_never_sent_or_still_waiting_is_ignored(handle: Handle, repo: FakeRepository) -> None:
    assert await handle(handlers.acknowledge_sync, ack("ok", sync_id="no-such-sync")) == []

    await handle(handlers.configure_practice, configured("praktika"))
    await handle(handlers.sync_cancellation, cancelled())  # waiting for its request
    assert await handle(handlers.acknowledge_sync, ack("ok")) == []
    assert [s["status"] for s in repo.syncs.values()] == ["waiting"]

"""pms-sync's handlers against a fake of their repository: what each integration gets (none,
manual, a connector's topic), a command that waits for its request's chart note, how acks
settle a sync (ok, error, late, unknown), and what staff are asked to do by hand. No database,
no broker, milliseconds each.

The commands and messages themselves are tables in tests/unit/test_pms_sync_domain.py; resends,
the SQL and the broker are tests/integration/test_pms_sync_service.py.
"""

from __future__ import annotations

import json
from collections import Counter
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
    seconds from now (`next_retry_in`) that the SQL adds to `now()`. `calls` counts the calls of
    each function: one call is one statement."""

    def __init__(self) -> None:
        self.integrations: dict[str, dict[str, Any]] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        self.syncs: dict[str, dict[str, Any]] = {}
        self.manual_updates: list[dict[str, Any]] = []
        self.calls: Counter[str] = Counter()

    async def configure_integration(
        self, conn: Any, practice_id: str, integration: str, configured_at: datetime
    ) -> None:
        self.calls["configure_integration"] += 1
        known = self.integrations.get(practice_id)
        if known is None or known["configured_at"] <= configured_at:
            self.integrations[practice_id] = {"integration": integration, "configured_at": configured_at}

    async def integrations_of(self, conn: Any, practice_ids: list[str]) -> dict[str, str]:
        self.calls["integrations_of"] += 1
        return {p: self.integrations[p]["integration"] for p in practice_ids if p in self.integrations}

    async def remember_requests(self, conn: Any, requests: list[dict[str, Any]]) -> None:
        self.calls["remember_requests"] += 1
        for r in requests:  # the first under an id stays (ON CONFLICT DO NOTHING)
            self.requests.setdefault(
                r["request_id"],
                {
                    "request_id": r["request_id"],
                    "booking_id": r["booking_id"],
                    "kind": r["kind"],
                    "actor": json.dumps(r["actor"]),
                    "chart_note": r["chart_note"],
                },
            )

    async def get_request(self, conn: Any, request_id: str) -> dict[str, Any] | None:
        self.calls["get_request"] += 1
        request = self.requests.get(request_id)
        return dict(request) if request else None

    async def get_requests(self, conn: Any, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        self.calls["get_requests"] += 1
        return {r: dict(self.requests[r]) for r in request_ids if r in self.requests}

    async def add_syncs(self, conn: Any, syncs: list[dict[str, Any]]) -> set[str]:
        self.calls["add_syncs"] += 1
        added: set[str] = set()
        for s in syncs:
            if s["sync_id"] in self.syncs:
                continue
            added.add(s["sync_id"])
            self.syncs[s["sync_id"]] = {
                **{k: s[k] for k in ("sync_id", "booking_id", "practice_id", "request_id", "integration")},
                **{k: s[k] for k in ("action", "topic", "correlation_id")},
                "command": json.dumps(s["command"]),
                "status": "waiting" if s["waiting"] else "sent",
                "attempts": 0 if s["waiting"] else 1,
                "next_retry_in": s["wait_seconds"],
                "error": None,
                "external_ref": None,
            }
        return added

    def _row(self, sync: dict[str, Any]) -> dict[str, Any]:
        return {c: sync[c] for c in SYNC_COLUMNS.split()}

    async def lock_syncs(self, conn: Any, sync_ids: list[str]) -> dict[str, dict[str, Any]]:
        self.calls["lock_syncs"] += 1
        return {s: self._row(self.syncs[s]) for s in sync_ids if s in self.syncs}

    async def lock_waiting_syncs(self, conn: Any, request_ids: list[str]) -> list[dict[str, Any]]:
        self.calls["lock_waiting_syncs"] += 1
        waiting = [s for s in self.syncs.values() if s["request_id"] in request_ids and s["status"] == "waiting"]
        return [self._row(s) for s in sorted(waiting, key=lambda s: (s["request_id"], s["booking_id"], s["sync_id"]))]

    async def mark_first_sent(self, conn: Any, sends: list[tuple[str, dict[str, Any], float]]) -> None:
        self.calls["mark_first_sent"] += 1
        for sync_id, command, ack_wait_seconds in sends:
            self.syncs[sync_id] |= {
                "command": json.dumps(command),
                "status": "sent",
                "attempts": 1,
                "next_retry_in": ack_wait_seconds,
            }

    async def complete_syncs(self, conn: Any, completed: list[tuple[str, str | None]]) -> None:
        self.calls["complete_syncs"] += 1
        for sync_id, external_ref in completed:
            self.syncs[sync_id] |= {"status": "completed", "external_ref": external_ref, "next_retry_in": None}

    async def fail_syncs(self, conn: Any, failed: list[tuple[str, str]]) -> None:
        self.calls["fail_syncs"] += 1
        for sync_id, error in failed:
            self.syncs[sync_id] |= {"status": "failed", "error": error, "next_retry_in": None}

    async def add_manual_updates(self, conn: Any, updates: list[dict[str, Any]]) -> None:
        self.calls["add_manual_updates"] += 1
        keys = ("booking_id", "practice_id", "integration", "action", "message", "sync_id")
        self.manual_updates += [{k: m[k] for k in keys} for m in updates]


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


# --- sets: many records of one type at once ----------------------------------------------------------

Published = list[list[tuple[str, str, str, dict[str, Any]]]]


async def as_set(
    unit_for: Callable[..., Unit[Any]], repo: FakeRepository, handler: Any, payloads: list[Payload], first: int = 0
) -> Published:
    """`payloads` handed to `handler` as one set, as the consumer hands a wave; what each record
    published, record by record."""
    units = [
        unit_for(
            "pms-sync", PmsSyncDeps(settings=SETTINGS, repository=repo), TOPICS[type(p)], p, correlation_id=f"c-{i}"
        )
        for i, p in enumerate(payloads, start=first)
    ]
    await handler.handle_many(units, [u.event.payload for u in units])
    for unit in units:  # every event carries its own record's correlation id
        assert {e.envelope.get("correlationid") for e in unit.emitted} <= {unit.event.correlation_id}
    return [[(e.topic, e.key, e.envelope["type"], e.envelope["data"]) for e in u.emitted] for u in units]


async def one_by_one(
    unit_for: Callable[..., Unit[Any]], repo: FakeRepository, handler: Any, payloads: list[Payload]
) -> Published:
    """The same records, each a set of one (the per-record path: the savepoint retry, or
    CONSUMER_SET_BASED=false)."""
    return [(await as_set(unit_for, repo, handler, [p], first=i))[0] for i, p in enumerate(payloads)]


def state(repo: FakeRepository) -> tuple[Any, ...]:
    """What the handlers stored; a wait for an ack is jittered, so it is told only as such."""

    def wait(seconds: float | None) -> Any:
        if seconds is not None and SETTINGS.pms_ack_timeout_seconds / 2 <= seconds <= SETTINGS.pms_ack_timeout_seconds:
            return "an ack's wait"
        return seconds

    syncs = {k: s | {"next_retry_in": wait(s["next_retry_in"])} for k, s in repo.syncs.items()}
    return syncs, repo.requests, repo.manual_updates


def request_for(booking_id: str, request_id: str) -> BookingCancellationRequested:
    return requested(request_id).model_copy(update={"booking_id": booking_id})


def cancellation_of(booking_id: str, request_id: str, practice_id: str, **overrides: Any) -> BookingCancelled:
    return cancelled(booking_id=booking_id, request_id=request_id, practice_id=practice_id, **overrides)


async def a_world(
    unit_for: Callable[..., Unit[Any]], repo: FakeRepository, n: int
) -> tuple[list[Payload], list[Payload]]:
    """Practices of every kind, n of each; some requests read already. Returns the set of
    cancellations (every branch: sent, waiting, a series, manual, none, never configured, a
    replay) and the set of requests that follows (some with commands waiting, one twice)."""
    now = T - timedelta(days=1)
    cancellations: list[Payload] = []
    requests: list[Payload] = []
    for i in range(n):
        for kind in ("praktika", "core_practice", "manual", "none"):
            await repo.configure_integration(None, f"p-{kind}-{i}", kind, now)
        # sent at once: its request was read first
        await repo.remember_requests(
            None,
            [
                {
                    "request_id": f"r-sent-{i}",
                    "booking_id": f"b-sent-{i}",
                    "kind": "cancellation",
                    "actor": STAFF,
                    "chart_note": "flu",
                }
            ],
        )
        cancellations.append(cancellation_of(f"b-sent-{i}", f"r-sent-{i}", f"p-praktika-{i}"))
        # waits for its request, a series of three: the request comes in the next set
        cancellations.append(
            cancellation_of(
                f"b-wait-{i}",
                f"r-wait-{i}",
                f"p-core_practice-{i}",
                series_booking_ids=[f"b-wait-{i}-2", f"b-wait-{i}-3"],
            )
        )
        requests.append(request_for(f"b-wait-{i}", f"r-wait-{i}"))
        # manual, a series of two: asked by hand for each
        cancellations.append(
            cancellation_of(f"b-man-{i}", f"r-man-{i}", f"p-manual-{i}", series_booking_ids=[f"b-man-{i}-2"])
        )
        cancellations.append(cancellation_of(f"b-none-{i}", f"r-none-{i}", f"p-none-{i}"))
        cancellations.append(cancellation_of(f"b-unknown-{i}", f"r-unknown-{i}", f"p-never-configured-{i}"))
        # system channel: never waits, no request will come
        system = {"kind": "system", "id": "service/booking", "roles": []}
        cancellations.append(
            cancellation_of(f"b-sys-{i}", f"r-sys-{i}", f"p-praktika-{i}", actor=system, channel="system")
        )
        # a request nothing waits for
        requests.append(request_for(f"b-other-{i}", f"r-other-{i}"))
    # a replay of one already synced: the same sync, sent once
    replayed = cancellation_of(
        "b-replayed",
        "r-replayed",
        "p-praktika-0",
        actor={"kind": "system", "id": "service/booking", "roles": []},
        channel="system",
    )
    await as_set(unit_for, repo, handlers.sync_cancellation, [replayed], first=-1)
    cancellations.append(replayed)
    # the same request twice in one set (two records): remembered and acted on once
    requests.append(request_for("b-wait-0", "r-wait-0"))
    return cancellations, requests


@pytest.mark.parametrize("n", [1, 4])
async def test_a_set_of_cancellations_and_requests_costs_one_call_of_each_kind_and_each_record_publishes_its_own(
    unit_for: Callable[..., Unit[Any]], n: int
) -> None:
    repo = FakeRepository()
    cancellations, requests = await a_world(unit_for, repo, n)

    repo.calls.clear()
    published = await as_set(unit_for, repo, handlers.sync_cancellation, cancellations)
    # a fixed number of calls whatever the set's size: integrations, requests, syncs, manual updates
    assert repo.calls == Counter(integrations_of=1, get_requests=1, add_syncs=1, add_manual_updates=1)
    kinds = [[(topic, key, type_) for topic, key, type_, _ in p] for p in published]
    core = PMS_INTEGRATION_TOPICS["core_practice"]
    for i in range(n):
        sent, wait, manual, none, unknown, system = kinds[6 * i : 6 * i + 6]
        assert sent == [(PRAKTIKA, f"b-sent-{i}", "pms.cancel_booking")]
        assert published[6 * i][0][3]["chart_note"] == "flu"
        assert wait == []  # waiting for its request
        assert manual == [
            (PMS_SYNC_EVENTS, f"b-man-{i}", "pms.manual_update_required"),
            (PMS_SYNC_EVENTS, f"b-man-{i}-2", "pms.manual_update_required"),
        ]
        assert (none, unknown) == ([], [])
        assert system == [(PRAKTIKA, f"b-sys-{i}", "pms.cancel_booking")]
        assert [
            repo.syncs[domain.sync_id(b, f"r-wait-{i}")]["status"]
            for b in (f"b-wait-{i}", f"b-wait-{i}-2", f"b-wait-{i}-3")
        ] == ["waiting"] * 3
    assert kinds[-1] == []  # the replay
    assert len(repo.manual_updates) == 2 * n

    repo.calls.clear()
    published = await as_set(unit_for, repo, handlers.remember_cancellation_request, requests)
    assert repo.calls == Counter(remember_requests=1, lock_waiting_syncs=1, get_requests=1, mark_first_sent=1)
    for i in range(n):
        waited, other = published[2 * i : 2 * i + 2]
        assert [(topic, key) for topic, key, _, _ in waited] == [
            (core, f"b-wait-{i}"),
            (core, f"b-wait-{i}-2"),
            (core, f"b-wait-{i}-3"),
        ]
        assert {data["chart_note"] for _, _, _, data in waited} == {"Patient has flu; rebook in 2 weeks"}
        assert other == []
    assert published[-1] == []  # the same request again: its commands went out with the first
    assert {s["status"] for s in repo.syncs.values()} == {"sent"}


async def test_a_set_of_cancellations_and_requests_does_what_the_records_do_one_by_one(
    unit_for: Callable[..., Unit[Any]],
) -> None:
    together, alone = FakeRepository(), FakeRepository()
    cancellations, requests = await a_world(unit_for, together, 3)
    await a_world(unit_for, alone, 3)

    assert await as_set(unit_for, together, handlers.sync_cancellation, cancellations) == await one_by_one(
        unit_for, alone, handlers.sync_cancellation, cancellations
    )
    assert state(together) == state(alone)
    assert await as_set(unit_for, together, handlers.remember_cancellation_request, requests) == await one_by_one(
        unit_for, alone, handlers.remember_cancellation_request, requests
    )
    assert state(together) == state(alone)


async def test_a_set_of_no_shows_and_reports_costs_one_call_of_each_kind_and_does_what_they_do_one_by_one(
    unit_for: Callable[..., Unit[Any]],
) -> None:
    def recorded(i: int, practice_id: str) -> BookingNoShowRecorded:
        return no_show_recorded().model_copy(
            update={"booking_id": f"b-{i}", "request_id": f"r-{i}", "practice_id": practice_id}
        )

    def reported(i: int) -> BookingNoShowReported:
        return no_show_reported().model_copy(update={"booking_id": f"b-{i}", "request_id": f"r-{i}"})

    now = T - timedelta(days=1)
    results = []
    for together in (True, False):
        repo = FakeRepository()
        for kind in ("praktika", "manual", "none"):
            await repo.configure_integration(None, f"p-{kind}", kind, now)
        # b-0's report read first (sent at once), b-1's after (it waits), manual, none, unknown
        await repo.remember_requests(
            None, [{"request_id": "r-0", "booking_id": "b-0", "kind": "no_show", "actor": NURSE, "chart_note": "DNA"}]
        )
        no_shows = [
            recorded(0, "p-praktika"),
            recorded(1, "p-praktika"),
            recorded(2, "p-manual"),
            recorded(3, "p-none"),
            recorded(4, "p-other"),
        ]
        reports = [reported(1), reported(5)]
        repo.calls.clear()
        run = as_set if together else one_by_one
        first = await run(unit_for, repo, handlers.sync_no_show, no_shows)
        second = await run(unit_for, repo, handlers.remember_no_show_report, reports)
        if together:
            assert repo.calls == Counter(
                integrations_of=1,
                get_requests=2,
                add_syncs=1,
                add_manual_updates=1,
                remember_requests=1,
                lock_waiting_syncs=1,
                mark_first_sent=1,
            )
        results.append((first, second, state(repo)))
    assert results[0] == results[1]
    first, second, _ = results[0]
    assert [[(t, k, ty) for t, k, ty, _ in p] for p in first] == [
        [(PRAKTIKA, "b-0", "pms.record_no_show")],
        [],
        [(PMS_SYNC_EVENTS, "b-2", "pms.manual_update_required")],
        [],
        [],
    ]
    assert first[0][0][3]["actor"] == NURSE
    [[(_, key, _, command)], []] = second
    assert (key, command["actor"], command["chart_note"]) == ("b-1", NURSE, "Did not answer two calls")


async def acks_world(unit_for: Callable[..., Unit[Any]], repo: FakeRepository, n: int) -> list[Payload]:
    """n cancellations sent to Praktika per kind of ack, and the set of acks that follows: ok,
    an error, one for a sync never sent, one for a sync still waiting, a late one after the sync
    ended."""
    await repo.configure_integration(None, PRACTICE, "praktika", T - timedelta(days=1))
    system = {"kind": "system", "id": "service/booking", "roles": []}
    bookings = [f"b-{kind}-{i}" for i in range(n) for kind in ("ok", "error", "late")]
    sent = [cancellation_of(b, f"r-{b}", PRACTICE, actor=system, channel="system") for b in bookings]
    waiting = [cancellation_of(f"b-wait-{i}", f"r-wait-{i}", PRACTICE) for i in range(n)]
    await as_set(unit_for, repo, handlers.sync_cancellation, sent + waiting, first=-100)
    for i in range(n):  # the late one's sync ended already
        await repo.complete_syncs(None, [(domain.sync_id(f"b-late-{i}", f"r-b-late-{i}"), "PRK-0")])

    def ack_of(booking_id: str, status: str, **extra: Any) -> PmsSyncAcknowledged:
        request = f"r-{booking_id}" if not booking_id.startswith("b-wait") else f"r-wait-{booking_id[7:]}"
        return PmsSyncAcknowledged.new(
            sync_id=domain.sync_id(booking_id, request), booking_id=booking_id, status=status, **extra
        )

    acks: list[Payload] = []
    for i in range(n):
        acks += [
            ack_of(f"b-ok-{i}", "ok", external_ref=f"PRK-{i}"),
            ack_of(f"b-error-{i}", "error", error="Appointment is locked"),
            ack_of(f"b-late-{i}", "error", error="too late"),
            ack_of(f"b-wait-{i}", "ok"),
            PmsSyncAcknowledged.new(sync_id=f"never-sent-{i}", booking_id=f"b-x-{i}", status="ok"),
        ]
    return acks


@pytest.mark.parametrize("n", [1, 4])
async def test_a_set_of_acks_costs_one_call_of_each_kind_and_each_record_publishes_its_own(
    unit_for: Callable[..., Unit[Any]], n: int
) -> None:
    repo = FakeRepository()
    acks = await acks_world(unit_for, repo, n)
    repo.calls.clear()
    published = await as_set(unit_for, repo, handlers.acknowledge_sync, acks)

    assert repo.calls == Counter(lock_syncs=1, complete_syncs=1, fail_syncs=1, add_manual_updates=1)
    for i in range(n):
        ok, error, late, waiting, never = published[5 * i : 5 * i + 5]
        assert [(key, type_) for _, key, type_, _ in ok] == [(f"b-ok-{i}", "pms.sync_completed")]
        assert [(key, type_) for _, key, type_, _ in error] == [
            (f"b-error-{i}", "pms.sync_failed"),
            (f"b-error-{i}", "pms.manual_update_required"),
        ]
        assert (late, waiting, never) == ([], [], [])
        assert repo.syncs[domain.sync_id(f"b-ok-{i}", f"r-b-ok-{i}")]["external_ref"] == f"PRK-{i}"
    assert [m["booking_id"] for m in repo.manual_updates] == [f"b-error-{i}" for i in range(n)]


async def test_a_set_of_acks_does_what_the_acks_do_one_by_one_even_naming_a_sync_twice(
    unit_for: Callable[..., Unit[Any]],
) -> None:
    together, alone = FakeRepository(), FakeRepository()
    acks = await acks_world(unit_for, together, 3)
    await acks_world(unit_for, alone, 3)
    # the connector acknowledges b-error-0 again, ok this time (two records of one set): too late
    acks.append(acks[1].model_copy(update={"status": "ok", "error": None}))
    assert await as_set(unit_for, together, handlers.acknowledge_sync, acks) == await one_by_one(
        unit_for, alone, handlers.acknowledge_sync, acks
    )
    assert state(together) == state(alone)
    assert together.syncs[domain.sync_id("b-error-0", "r-b-error-0")]["status"] == "failed"

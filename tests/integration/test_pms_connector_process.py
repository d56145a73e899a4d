"""The reference PMS connector as a real process, between the pms-sync process and a PMS (a
local HTTP server acting as one), on the real broker and database: a cancellation reaches the
PMS once with everything and the sync's id as Idempotency-Key, the connector acknowledges it
and the sync completes once; a PMS that is briefly down is tried again; a PMS that refuses
makes the practice update by hand; a connector killed mid-call applies nothing twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from test_pms_sync_service import (  # the same helpers as the service's own tests
    LATE_FEE,
    T_START,
    booking_cancelled,
    configure,
    of,
    request_cancellation,
    start_pms_sync,
    wait_for_row,
)

from shared.access import ADMIN_ONLY_SETTINGS, client_env
from shared.kafka import client_args
from shared.testing import EventWatcher, Publisher, ServiceProcess, free_port, iso, unique
from shared.topics import BOOKING_EVENTS, PMS_INTEGRATION_TOPICS, PMS_SYNC_ACKS, PMS_SYNC_EVENTS, UPSTREAM_BOOKINGS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONNECTOR_ROOT = ROOT / "services" / "pms-connector"
PRAKTIKA = PMS_INTEGRATION_TOPICS["praktika"]
CORE_PRACTICE = PMS_INTEGRATION_TOPICS["core_practice"]
WATCHED = [PRAKTIKA, CORE_PRACTICE, PMS_SYNC_ACKS, PMS_SYNC_EVENTS]


# --- a PMS: the reference API of pms_connector.pms, honouring Idempotency-Key ------------------


@dataclass
class PmsCall:
    path: str
    idempotency_key: str | None
    body: dict[str, Any]


@dataclass
class FakePms:
    """Answers each booking's calls from a script (default: 201 with a reference). A key it has
    answered with a final answer (2xx, 4xx) gets that answer again and changes nothing: a
    change is applied once per Idempotency-Key, as the connector README asks of a PMS."""

    calls: list[PmsCall] = field(default_factory=list)
    applied: list[PmsCall] = field(default_factory=list)
    scripts: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    holds: dict[str, threading.Event] = field(default_factory=dict)  # booking -> answer only once set
    answered: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FakePms:
        pms = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                status, answer, hold = pms._answer(PmsCall(self.path, self.headers.get("Idempotency-Key"), body))
                if hold is not None:
                    hold.wait(60)
                raw = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except OSError:
                    pass  # the connector is gone (killed while waiting)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def _answer(self, call: PmsCall) -> tuple[int, dict[str, Any], threading.Event | None]:
        booking_id = _booking_of(call.path)
        with self.lock:
            self.calls.append(call)
            if call.idempotency_key in self.answered:
                return (*self.answered[call.idempotency_key], None)
            script = self.scripts.get(booking_id) or []
            status, answer = script.pop(0) if script else (201, {"reference": f"PMS-{booking_id[-6:]}"})
            if status < 500:  # a final answer: remember it for the key
                self.answered[call.idempotency_key or ""] = (status, answer)
            if 200 <= status < 300:
                self.applied.append(call)
            return status, answer, self.holds.pop(booking_id, None)

    def calls_for(self, booking_id: str) -> list[PmsCall]:
        return [c for c in self.calls if _booking_of(c.path) == booking_id]

    def applied_for(self, booking_id: str) -> list[PmsCall]:
        return [c for c in self.applied if _booking_of(c.path) == booking_id]

    async def wait_for_calls(self, booking_id: str, count: int = 1, timeout: float = 30.0) -> list[PmsCall]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.calls_for(booking_id)) >= count:
                return self.calls_for(booking_id)
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"the PMS saw {len(self.calls_for(booking_id))} call(s) for {booking_id}, expected {count}"
        )

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/v2"

    def stop(self) -> None:
        for hold in self.holds.values():
            hold.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _booking_of(path: str) -> str:
    return path.rstrip("/").split("/")[-2]  # /v2/appointments/<booking_id>/cancel


# --- the connector as a process --------------------------------------------------------------


async def start_at_the_end(bootstrap: str, group_id: str, topic: str) -> None:
    """Commit the new group's offsets at the end of the topic, so the connector under test takes
    only what is published from now on, not every command other tests ever sent."""
    consumer = AIOKafkaConsumer(**client_args(bootstrap), group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert partitions, f"topic {topic} has no partitions"
        consumer.assign(partitions)
        await consumer.commit(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


@dataclass
class ConnectorProcess:
    integration: str
    pms_url: str
    bootstrap: str
    log_dir: Path
    group_id: str = ""  # default: a fresh group among those the integration's principal may use
    practice_ids: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.group_id = self.group_id or unique(f"{self.principal}-test")

    @property
    def principal(self) -> str:
        return f"pms-connector-{self.integration}"

    def start(self) -> ConnectorProcess:
        # Not installed in the venv until uv.lock includes the new workspace member: on the path.
        pythonpath = os.pathsep.join(p for p in (str(CONNECTOR_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {
            # As a connector author runs it: with its own principal's settings, not the harness's.
            **{k: v for k, v in os.environ.items() if k not in ADMIN_ONLY_SETTINGS},
            **client_env(self.principal),
            "PYTHONPATH": pythonpath,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CONNECTOR_INTEGRATION": self.integration,
            "CONNECTOR_GROUP_ID": self.group_id,
            "CONNECTOR_PRACTICE_IDS": ",".join(self.practice_ids),
            "PMS_API_URL": self.pms_url,
            "CONNECTOR_HTTP_BACKOFF_SECONDS": "0.2",
            "LOG_FORMAT": "json",
        }
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"pms-connector-{self.group_id}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pms_connector"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


# --- fixtures: one pms-sync, one PMS and one connector per integration for the module --------


@dataclass
class Setup:
    pms: FakePms
    pms_sync: ServiceProcess
    practices: dict[str, str]  # integration -> the practice its connector serves
    connectors: dict[str, ConnectorProcess]


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pms-connector-logs")


@pytest.fixture(scope="module")
async def setup(infra: Any, logs: Path) -> AsyncIterator[Setup]:
    pms = FakePms().start()
    practices = {"praktika": unique("prac"), "core_practice": unique("prac")}
    connectors = {
        integration: ConnectorProcess(integration, pms.url, infra.bootstrap, logs, practice_ids=[practice_id])
        for integration, practice_id in practices.items()
    }
    for integration, connector in connectors.items():
        await start_at_the_end(infra.bootstrap, connector.group_id, PMS_INTEGRATION_TOPICS[integration])
    pms_sync = start_pms_sync(infra, logs)
    for connector in connectors.values():
        connector.start()
    try:
        yield Setup(pms, pms_sync, practices, connectors)
    finally:
        for connector in connectors.values():
            connector.stop()
        pms_sync.stop()
        pms.stop()


async def cancel(infra: Any, publisher: Publisher, practice_id: str, booking_id: str, chart_note: str) -> str:
    request_id = unique("req")
    actor = await request_cancellation(infra, publisher, booking_id, request_id, chart_note=chart_note)
    await publisher.event(
        BOOKING_EVENTS, "booking.cancelled", booking_id, booking_cancelled(booking_id, request_id, practice_id, actor)
    )
    return request_id


# --- the tests --------------------------------------------------------------------------------


async def test_a_cancellation_reaches_the_pms_once_and_the_sync_completes_once(
    infra: Any, publisher: Publisher, setup: Setup
) -> None:
    practice_id, booking_id = setup.practices["praktika"], unique("bk")
    await configure(infra, publisher, practice_id, "praktika")
    async with EventWatcher(infra.bootstrap, WATCHED) as w:
        await cancel(infra, publisher, practice_id, booking_id, chart_note="Pt called in sick; rebook in 2 wks")
        [command] = await w.wait_for(of(booking_id, "pms.cancel_booking"))
        sync_id = command.data["sync_id"]
        [call] = await setup.pms.wait_for_calls(booking_id)
        assert (call.path, call.idempotency_key) == (f"/v2/appointments/{booking_id}/cancel", sync_id)
        assert call.body == {
            "practice_id": practice_id,
            "status": "cancelled",
            "status_label": "Cancelled",
            "cancelled_at": "2031-03-10T17:00:00Z",
            "cancelled_by": {"kind": "staff", "id": "staff-7", "roles": ["reception"]},
            "classification": "late",
            "reason_code": "illness",
            "reason_text": "Flu",
            "fee": LATE_FEE,
            "chart_note": "Pt called in sick; rebook in 2 wks",
        }
        [ack] = await w.wait_for(of(booking_id, "pms.sync_acknowledged"))
        assert ack.key == booking_id and ack.value["source"] == "connector/praktika"
        assert ack.value["correlationid"] == command.value["correlationid"]
        assert ack.data == {
            "sync_id": sync_id,
            "booking_id": booking_id,
            "status": "ok",
            "external_ref": f"PMS-{booking_id[-6:]}",
        }
        [completed] = await w.wait_for(of(booking_id, "pms.sync_completed"))
        assert completed.data == {
            "sync_id": sync_id,
            "booking_id": booking_id,
            "integration": "praktika",
            "attempts": 1,
        }

        await w.settle(2.0)
        assert len(setup.pms.calls_for(booking_id)) == 1
        assert len(w.matching(of(booking_id, "pms.sync_acknowledged"))) == 1
        assert len(w.matching(of(booking_id, "pms.sync_completed"))) == 1
        assert w.matching(of(booking_id, "pms.manual_update_required")) == []
    [row] = setup.pms_sync.get_json(f"/bookings/{booking_id}/syncs")["items"]
    assert (row["status"], row["external_ref"]) == ("completed", f"PMS-{booking_id[-6:]}")


async def test_a_no_show_reaches_a_core_practice_pms(infra: Any, publisher: Publisher, setup: Setup) -> None:
    practice_id, booking_id, request_id = setup.practices["core_practice"], unique("bk"), unique("req")
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
    async with EventWatcher(infra.bootstrap, WATCHED) as w:
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
                    "fee": LATE_FEE,
                    "charge_card": False,
                    "deposit_action": "none",
                    "policy_version": "r1.s1",
                },
            },
        )
        [call] = await setup.pms.wait_for_calls(booking_id)
        assert call.path == f"/v2/appointments/{booking_id}/no-show"
        assert call.body == {
            "practice_id": practice_id,
            "status": "no_show",
            "code": "FTA",
            "recorded_at": "2031-03-10T22:20:00Z",
            "recorded_by": reporter,
            "fee": LATE_FEE,
            "chart_note": "No answer on phone",
        }
        [completed] = await w.wait_for(of(booking_id, "pms.sync_completed"))
        assert completed.data["integration"] == "core_practice" and completed.data["sync_id"] == call.idempotency_key


async def test_a_pms_down_for_a_moment_gets_the_change_once(infra: Any, publisher: Publisher, setup: Setup) -> None:
    practice_id, booking_id = setup.practices["praktika"], unique("bk")
    setup.pms.scripts[booking_id] = [
        (503, {"message": "maintenance"}),
        (503, {"message": "maintenance"}),
        (200, {"reference": "PRK-3"}),
    ]
    await configure(infra, publisher, practice_id, "praktika")
    async with EventWatcher(infra.bootstrap, WATCHED) as w:
        await cancel(infra, publisher, practice_id, booking_id, chart_note="n")
        [completed] = await w.wait_for(of(booking_id, "pms.sync_completed"))
        calls = setup.pms.calls_for(booking_id)
        assert len(calls) == 3 and {c.idempotency_key for c in calls} == {completed.data["sync_id"]}
        assert len({json.dumps(c.body, sort_keys=True) for c in calls}) == 1
        await w.settle(2.0)
        assert len(setup.pms.applied_for(booking_id)) == 1
        assert len(w.matching(of(booking_id, "pms.sync_completed"))) == 1
        [ack] = w.matching(of(booking_id, "pms.sync_acknowledged"))
        assert (ack.data["status"], ack.data["external_ref"]) == ("ok", "PRK-3")
        assert w.matching(of(booking_id, "pms.sync_failed")) == []


async def test_a_pms_that_refuses_makes_the_practice_update_by_hand(
    infra: Any, publisher: Publisher, setup: Setup
) -> None:
    practice_id, booking_id = setup.practices["praktika"], unique("bk")
    setup.pms.scripts[booking_id] = [(422, {"message": "appointment is locked by another user"})]
    await configure(infra, publisher, practice_id, "praktika")
    async with EventWatcher(infra.bootstrap, WATCHED) as w:
        await cancel(infra, publisher, practice_id, booking_id, chart_note="n")
        [ack] = await w.wait_for(of(booking_id, "pms.sync_acknowledged"))
        error = "422 Unprocessable Entity: appointment is locked by another user"
        assert (ack.data["status"], ack.data["error"]) == ("error", error)
        [failed] = await w.wait_for(of(booking_id, "pms.sync_failed"))
        assert (failed.data["error"], failed.data["attempts"]) == (error, 1)
        [manual] = await w.wait_for(of(booking_id, "pms.manual_update_required"))
        assert manual.data == {
            "booking_id": booking_id,
            "practice_id": practice_id,
            "integration": "praktika",
            "action": "cancel_booking",
            "message": f"Manual update required: cancel this booking in Praktika too (Praktika did not confirm it: {error})",
        }
        await w.settle(2.0)
        assert len(setup.pms.calls_for(booking_id)) == 1  # a refusal is final: not tried again
        assert w.matching(of(booking_id, "pms.sync_completed")) == []
    [update] = setup.pms_sync.get_json(f"/practices/{practice_id}/manual-updates")["items"][:1]
    assert (update["booking_id"], update["sync_id"]) == (booking_id, failed.data["sync_id"])


async def test_a_connector_killed_mid_call_applies_the_change_once(
    infra: Any, publisher: Publisher, setup: Setup, logs: Path
) -> None:
    """The PMS applied the change but the connector died before acknowledging it: the command is
    delivered again (its offset was never committed), the PMS sees the same Idempotency-Key and
    answers as before, and the sync completes once."""
    practice_id, booking_id = unique("prac"), unique("bk")
    connector = ConnectorProcess("praktika", setup.pms.url, infra.bootstrap, logs, practice_ids=[practice_id])
    await start_at_the_end(infra.bootstrap, connector.group_id, PRAKTIKA)
    connector.start()
    hold = threading.Event()
    try:
        setup.pms.holds[booking_id] = hold
        await configure(infra, publisher, practice_id, "praktika")
        async with EventWatcher(infra.bootstrap, WATCHED) as w:
            await cancel(infra, publisher, practice_id, booking_id, chart_note="n")
            [first] = await setup.pms.wait_for_calls(booking_id)
            assert len(setup.pms.applied_for(booking_id)) == 1  # applied; the answer is held back
            connector.kill()
            hold.set()  # the answer goes nowhere: the connector is gone
            connector.start()  # the same group: it resumes from the last committed offset
            calls = await setup.pms.wait_for_calls(booking_id, count=2, timeout=60)
            assert {c.idempotency_key for c in calls} == {first.idempotency_key}
            [completed] = await w.wait_for(of(booking_id, "pms.sync_completed"), timeout=30)
            assert completed.data["sync_id"] == first.idempotency_key
            await w.settle(2.0)
            assert len(setup.pms.applied_for(booking_id)) == 1
            assert len(w.matching(of(booking_id, "pms.sync_completed"))) == 1
    finally:
        hold.set()
        connector.stop()

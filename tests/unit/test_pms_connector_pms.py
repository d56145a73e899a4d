"""The reference PMS connector's PMS side, by table: the call each command becomes, which
answers are final, what the acknowledgement says. The HTTP layer is httpx's own mock
transport (the real client interface), no network.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import stamina
from stamina.instrumentation import RetryDetails, set_on_retry_hooks

try:
    import pms_connector  # noqa: F401
except ImportError:  # the workspace member is installed once uv.lock includes it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "services" / "pms-connector"))

from pms_connector import pms
from pms_connector.settings import ConnectorSettings
from shared.contracts.common import Actor, Fee
from shared.contracts.pms_sync import PmsCancelBooking, PmsRecordNoShow, PmsUpdateFee

T = datetime(2031, 3, 10, 17, 0, tzinfo=UTC)
STAFF = Actor(kind="staff", id="staff-7", roles=["reception"])
FEE = Fee(amount=Decimal("45.00"), currency="AUD", code="D9987", code_system="CDT")


def cancel(**overrides: object) -> PmsCancelBooking:
    fields: dict[str, object] = {
        "sync_id": "sync-1",
        "booking_id": "bk/1",
        "practice_id": "prac-1",
        "cancelled_at": T,
        "actor": STAFF,
        "classification": "late",
        "reason_code": "illness",
        "reason_text": "Flu",
        "status_label": "Cancelled",
        "fee": FEE,
        "chart_note": "Pt called in sick",
    }
    return PmsCancelBooking.new(**(fields | overrides))


def test_a_cancellation_becomes_one_call_carrying_everything() -> None:
    request = pms.request_for(cancel())
    assert (request.path, request.idempotency_key) == ("/appointments/bk%2F1/cancel", "sync-1")
    assert request.body == {
        "practice_id": "prac-1",
        "status": "cancelled",
        "status_label": "Cancelled",
        "cancelled_at": "2031-03-10T17:00:00Z",
        "cancelled_by": {"kind": "staff", "id": "staff-7", "roles": ["reception"]},
        "classification": "late",
        "reason_code": "illness",
        "reason_text": "Flu",
        "fee": {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"},
        "chart_note": "Pt called in sick",
    }


def test_what_a_command_does_not_have_is_left_out() -> None:
    body = pms.request_for(
        cancel(reason_code=None, reason_text=None, fee=None, chart_note=None, status_label="Cancelled online")
    ).body
    assert set(body) == {"practice_id", "status", "status_label", "cancelled_at", "cancelled_by", "classification"}
    assert body["status_label"] == "Cancelled online"


def test_a_no_show_becomes_one_call_with_its_reporter_fee_and_chart_note() -> None:
    command = PmsRecordNoShow.new(
        sync_id="sync-2",
        booking_id="bk-2",
        practice_id="prac-1",
        code="FTA",
        recorded_at=T,
        actor=STAFF,
        fee=FEE,
        chart_note="No answer on phone",
    )
    request = pms.request_for(command)
    assert (request.path, request.idempotency_key) == ("/appointments/bk-2/no-show", "sync-2")
    assert request.body == {
        "practice_id": "prac-1",
        "status": "no_show",
        "code": "FTA",
        "recorded_at": "2031-03-10T17:00:00Z",
        "recorded_by": {"kind": "staff", "id": "staff-7", "roles": ["reception"]},
        "fee": {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"},
        "chart_note": "No answer on phone",
    }


@pytest.mark.parametrize(
    ("fee", "sent"),
    [
        (FEE, {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}),
        (None, None),  # waived: the PMS is told there is no fee any more, not left guessing
    ],
)
def test_a_fee_update_becomes_one_call_saying_what_the_fee_is_now(fee: Fee | None, sent: object) -> None:
    command = PmsUpdateFee.new(sync_id="sync-3", booking_id="bk/3", practice_id="prac-1", charge_id="ch-9", fee=fee)
    request = pms.request_for(command)
    assert (request.path, request.idempotency_key) == ("/appointments/bk%2F3/fee", "sync-3")
    assert request.body == {"practice_id": "prac-1", "charge_id": "ch-9", "fee": sent}


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (408, True),
        (429, True),
        (400, False),
        (401, False),
        (404, False),
        (409, False),
        (422, False),
    ],
)
def test_which_answers_are_worth_trying_again(status: int, transient: bool) -> None:
    assert pms.is_transient(status) is transient


def _pms(*answers: httpx.Response | Exception) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    """A PMS that gives these answers in turn (the last one again when they run out)."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        given = answers[min(len(seen), len(answers)) - 1]
        if isinstance(given, Exception):
            raise given
        return given

    return httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://pms.test/v2"), seen


async def _apply(client: httpx.AsyncClient, attempts: int = 5) -> pms.PmsResult:
    async with client:
        return await pms.apply(client, pms.request_for(cancel()), attempts=attempts, backoff=0.0, max_backoff=0.0)


async def test_applied_the_first_time() -> None:
    client, seen = _pms(httpx.Response(201, json={"reference": "PRK-77"}))
    assert await _apply(client) == pms.PmsResult("ok", external_ref="PRK-77")
    [request] = seen
    assert (request.method, str(request.url)) == ("POST", "http://pms.test/v2/appointments/bk%2F1/cancel")
    assert request.headers["Idempotency-Key"] == "sync-1"
    assert json.loads(request.content)["chart_note"] == "Pt called in sick"


async def test_a_pms_that_is_down_is_tried_again_with_the_same_key() -> None:
    client, seen = _pms(httpx.Response(503), httpx.ConnectError("refused"), httpx.Response(200, json={"id": 991}))
    assert await _apply(client) == pms.PmsResult("ok", external_ref="991")
    assert [r.headers["Idempotency-Key"] for r in seen] == ["sync-1"] * 3
    assert len({r.content for r in seen}) == 1


async def test_a_refusal_is_final_and_says_why() -> None:
    client, seen = _pms(httpx.Response(422, json={"message": "appointment is locked by another user"}))
    result = await _apply(client)
    assert result == pms.PmsResult("error", error="422 Unprocessable Entity: appointment is locked by another user")
    assert len(seen) == 1


async def test_a_refusal_without_a_json_body_still_says_what_came_back() -> None:
    client, _ = _pms(httpx.Response(404, text="no such appointment"))
    assert (await _apply(client)).error == "404 Not Found: no such appointment"
    client, _ = _pms(httpx.Response(409))
    assert (await _apply(client)).error == "409 Conflict"


async def test_out_of_attempts_the_command_is_left_unacknowledged() -> None:
    client, seen = _pms(httpx.Response(503, json={"message": "maintenance"}))
    assert await _apply(client, attempts=3) == pms.PmsResult(
        "unavailable", error="503 Service Unavailable: maintenance"
    )
    assert len(seen) == 3
    client, _ = _pms(httpx.ReadTimeout("slow"))
    assert await _apply(client, attempts=2) == pms.PmsResult("unavailable", error="PMS not reachable: ReadTimeout")


@pytest.fixture
def waits() -> Iterator[list[float]]:
    """The waits stamina schedules between tries, as its retry hooks report them."""
    seen: list[float] = []

    def record(details: RetryDetails) -> None:
        seen.append(details.wait_for)

    set_on_retry_hooks([record])
    try:
        yield seen
    finally:
        set_on_retry_hooks(None)


async def test_the_waits_grow_with_jitter_up_to_the_cap(waits: list[float]) -> None:
    client, seen = _pms(*[httpx.Response(503)] * 4, httpx.Response(200, json={"reference": "R1"}))
    async with client:
        result = await pms.apply(client, pms.request_for(cancel()), attempts=5, backoff=0.01, max_backoff=0.03)
    assert result == pms.PmsResult("ok", external_ref="R1") and len(seen) == 5
    # backoff × 2^(n−1) plus up to one backoff of jitter, never more than the cap
    bounds = [(0.01, 0.02), (0.02, 0.03), (0.03, 0.03), (0.03, 0.03)]
    assert len(waits) == 4
    assert all(low - 1e-9 <= wait <= high + 1e-9 for wait, (low, high) in zip(waits, bounds, strict=True)), waits


async def test_a_retry_after_is_followed_within_the_cap(waits: list[float]) -> None:
    client, seen = _pms(
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(503, headers={"Retry-After": "120"}),
        httpx.Response(200, json={"reference": "R2"}),
    )
    async with client:
        result = await pms.apply(client, pms.request_for(cancel()), attempts=5, backoff=1.0, max_backoff=0.02)
    assert result == pms.PmsResult("ok", external_ref="R2") and len(seen) == 3
    assert waits == pytest.approx([0.0, 0.02])


async def test_the_real_settings_retry_without_waiting_in_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_INTEGRATION", "praktika")
    monkeypatch.setenv("PMS_API_URL", "http://pms.test/v2")
    settings = ConnectorSettings()  # type: ignore[call-arg]
    client, seen = _pms(httpx.ConnectError("refused"))
    with stamina.set_testing(True, attempts=settings.connector_http_attempts, cap=True):  # no waits, same tries
        async with client:
            result = await pms.apply(
                client,
                pms.request_for(cancel()),
                attempts=settings.connector_http_attempts,
                backoff=settings.connector_http_backoff_seconds,
                max_backoff=settings.connector_http_max_backoff_seconds,
            )
    assert result == pms.PmsResult("unavailable", error="PMS not reachable: ConnectError")
    assert len(seen) == settings.connector_http_attempts == 5


@pytest.mark.parametrize("error", [httpx.DecodingError("garbled"), ValueError("not ours")])
async def test_only_transport_errors_and_transient_answers_are_tried_again(error: Exception) -> None:
    client, seen = _pms(error)
    with pytest.raises(type(error)):
        await _apply(client)
    assert len(seen) == 1


def test_settings_name_the_topic_and_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_INTEGRATION", "core_practice")
    monkeypatch.setenv("PMS_API_URL", "http://pms.test/v2/")
    monkeypatch.setenv("CONNECTOR_PRACTICE_IDS", " prac-1, prac-2 ,")
    settings = ConnectorSettings()  # type: ignore[call-arg]
    assert (settings.topic, settings.group_id, settings.pms_api_url) == (
        "pms-sync.core-practice.v1",
        "pms-connector-core_practice",
        "http://pms.test/v2",
    )
    assert settings.practice_ids == {"prac-1", "prac-2"}

"""notification with SMS_PROVIDER=twilio, as a process, against a local server that speaks
Twilio's Messages API (twilio_server.FakeTwilio): an SMS goes through the official SDK with Basic
auth (account SID, auth token) and its status callback URL, the message SID is kept on the
delivery, a refused number is a permanent failure at the first try, and Twilio's status callbacks
are recorded only when signed, once, and never a step back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from test_notification_service import booking_cancelled, booking_scheduled, contacts_known, practice_configured
from twilio_server import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, INVALID_NUMBER, FakeTwilio, signed_status

from shared.testing import EventWatcher, Mailbox, ServiceProcess, free_port, unique
from shared.topics import BOOKING_EVENTS, NOTIFICATION_EVENTS, UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def twilio() -> Iterator[FakeTwilio]:
    fake = FakeTwilio().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def notification(
    infra: Any, mailbox: Mailbox, twilio: FakeTwilio, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    port = free_port()
    service = ServiceProcess(
        "notification",
        infra.bootstrap,
        infra.admin_dsn,
        tmp_path_factory.mktemp("notification-twilio"),
        port=port,
        env={
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(mailbox.port),
            "SMS_PROVIDER": "twilio",
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "TWILIO_API_BASE_URL": twilio.url,
            "SMS_FROM": FROM_NUMBER,
            "SMS_STATUS_CALLBACK_URL": callback_url(port),
            "DELIVERY_MAX_ATTEMPTS": "3",
            "DELIVERY_RETRY_BASE_SECONDS": "0.2",
            "DELIVERY_POLL_INTERVAL_SECONDS": "0.1",
        },
    )
    try:
        yield service.start()
    finally:
        service.stop()


def callback_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/sms/status"


async def sms_row(infra: Any, booking_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(infra.admin_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT notification_id, status, attempts, reason, provider_message_id, provider_status,"
            " provider_error_code FROM notification.deliveries WHERE booking_id = $1 AND channel = 'sms'",
            booking_id,
        )
    finally:
        await conn.close()
    assert row is not None
    return row


async def cancel_with_sms(infra: Any, publisher: Any, booking_id: str, phone: str) -> None:
    practice_id = unique("prac-tw")
    await publisher.event(UPSTREAM_PRACTICES, "practice.configured", practice_id, practice_configured(practice_id))
    await publisher.event(
        UPSTREAM_BOOKINGS,
        "booking.scheduled",
        booking_id,
        booking_scheduled(booking_id, practice_id, {"first_name": "Ada", "phone": phone, "locale": "en"}),
    )
    await contacts_known(infra, booking_id, practice_id)
    cancelled = booking_cancelled(booking_id, practice_id, actor_kind="staff", channel="practice")
    await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking_id, cancelled)


async def test_an_sms_goes_through_the_sdk_with_basic_auth_and_its_signed_status_is_recorded(
    infra: Any, publisher: Any, notification: ServiceProcess, twilio: FakeTwilio
) -> None:
    booking_id, phone = unique("bk-tw"), "+61400765432"
    async with EventWatcher(infra.bootstrap, [NOTIFICATION_EVENTS]) as w:
        await cancel_with_sms(infra, publisher, booking_id, phone)
        await w.wait_for(
            lambda s: (
                s.type == "notification.sent" and s.data.get("booking_id") == booking_id and s.data["channel"] == "sms"
            ),
            timeout=60,
        )
    [request] = twilio.to(phone)
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert request.headers["authorization"] == twilio.basic_auth()  # Basic, never Bearer
    assert request.form["From"] == FROM_NUMBER and request.form["Body"]
    assert request.form["StatusCallback"] == callback_url(notification.port)
    row = await sms_row(infra, booking_id)
    assert row["status"] == "sent" and row["provider_message_id"] == request.sid and row["provider_status"] is None

    url = callback_url(notification.port)
    async with httpx.AsyncClient(timeout=10) as http:

        async def callback(form: dict[str, str], headers: dict[str, str]) -> httpx.Response:
            return await http.post(url, content="&".join(f"{k}={v}" for k, v in form.items()), headers=headers)

        delivered = {"MessageSid": request.sid or "", "MessageStatus": "delivered", "AccountSid": ACCOUNT_SID}
        form_type = {"Content-Type": "application/x-www-form-urlencoded"}
        assert (await callback(delivered, form_type)).status_code == 403  # unsigned
        assert (await callback(delivered, signed_status(url, delivered, auth_token="not-the-token"))).status_code == 403
        tampered = {**delivered, "MessageStatus": "failed", "ErrorCode": "30003"}
        assert (await callback(tampered, signed_status(url, delivered))).status_code == 403  # signed another form
        assert (await sms_row(infra, booking_id))["provider_status"] is None

        answer = await callback(delivered, signed_status(url, delivered))
        assert answer.status_code == 200 and answer.json() == {"recorded": True}
        again = await callback(delivered, signed_status(url, delivered))
        assert again.status_code == 200 and again.json() == {"recorded": False}  # repeated: recorded once
        late = {**delivered, "MessageStatus": "sent"}
        assert (await callback(late, signed_status(url, late))).json() == {"recorded": False}  # no step back
        unknown = {**delivered, "MessageSid": "SM" + "f" * 32}
        assert (await callback(unknown, signed_status(url, unknown))).json() == {"recorded": False}
        bad = {**delivered, "MessageStatus": "teleported"}
        assert (await callback(bad, signed_status(url, bad))).status_code == 400

    row = await sms_row(infra, booking_id)
    assert row["provider_status"] == "delivered" and row["provider_error_code"] is None
    log = notification.get_json(f"/bookings/{booking_id}/notifications")
    assert [i["provider_status"] for i in log["items"] if i["channel"] == "sms"] == ["delivered"]
    assert phone not in json.dumps(log)


async def test_a_number_twilio_refuses_is_a_permanent_failure_at_the_first_try(
    infra: Any, publisher: Any, notification: ServiceProcess, twilio: FakeTwilio
) -> None:
    booking_id = unique("bk-tw-invalid")
    async with EventWatcher(infra.bootstrap, [NOTIFICATION_EVENTS]) as w:
        await cancel_with_sms(infra, publisher, booking_id, INVALID_NUMBER)
        [failed] = await w.wait_for(
            lambda s: s.type == "notification.failed" and s.data.get("booking_id") == booking_id, timeout=60
        )
    assert failed.data["channel"] == "sms"
    assert "400" in failed.data["error"] and "21211" in failed.data["error"]
    assert INVALID_NUMBER not in json.dumps(failed.data)
    row = await sms_row(infra, booking_id)
    assert row["status"] == "failed" and row["attempts"] == 1 and row["provider_message_id"] is None
    assert len(twilio.to(INVALID_NUMBER)) >= 1 and all(r.answered == 400 for r in twilio.to(INVALID_NUMBER))

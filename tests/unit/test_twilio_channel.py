"""notification's Twilio SMS channel, on the SDK's own transport port (twilio.http.HttpClient)
with a fake behind it: Basic auth with the account SID and token, Twilio's refusals mapped as the
generic channel maps them (4xx permanent; 408, 429, 5xx and the network retried) without the
number in the reason, sends in worker threads at most SMS_MAX_CONCURRENT_SENDS at once while the
event loop runs on; and the order of Twilio's message statuses."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from typing import Any

import pytest
import requests
from twilio.http import HttpClient
from twilio.http.response import Response

from notification import domain
from notification.delivery import SMS_NOT_CONFIGURED, DeliveryError, SmsChannel, TwilioSmsChannel, sms_channel
from notification.settings import NotificationSettings

SID, TOKEN, FROM = "AC" + "a" * 32, "token-xyz", "+15005550006"
PHONE = "+61400111222"


def settings(**overrides: Any) -> NotificationSettings:
    fields: dict[str, Any] = {
        "sms_provider": "twilio",
        "twilio_account_sid": SID,
        "twilio_auth_token": TOKEN,
        "sms_from": FROM,
        "sms_status_callback_url": "https://notify.example/sms/status",
    }
    return NotificationSettings(**(fields | overrides))


class FakeTransport(HttpClient):
    """Answers every request with `status` (or raises `error`); counts sends in flight."""

    def __init__(self, status: int = 201, error: Exception | None = None, hold: float = 0.0) -> None:
        super().__init__(logging.getLogger("test.twilio"), False, None)
        self.status, self.error, self.hold = status, error, hold
        self.calls: list[dict[str, Any]] = []
        self.in_flight = self.most_in_flight = 0
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def request(self, method: str, url: str, params: Any = None, data: Any = None, headers: Any = None,
                auth: Any = None, timeout: Any = None, allow_redirects: bool = False) -> Response:  # fmt: skip
        with self._lock:
            self.calls.append({"method": method, "url": url, "data": data, "auth": auth})
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.threads.add(threading.get_ident())
        try:
            time.sleep(self.hold)  # a slow Twilio, in the worker thread
            if self.error is not None:
                raise self.error
            if self.status >= 400:
                body = {"code": 21211, "message": f"The 'To' number {PHONE} is not valid", "status": self.status}
                return Response(self.status, json.dumps(body))
            return Response(201, json.dumps({"sid": "SM" + uuid.uuid4().hex, "status": "queued", "to": PHONE}))
        finally:
            with self._lock:
                self.in_flight -= 1


async def test_a_send_posts_to_the_account_with_basic_auth_and_returns_the_sid() -> None:
    transport = FakeTransport()
    channel = TwilioSmsChannel(settings(), http_client=transport)
    sid = await channel.send(uuid.uuid4(), PHONE, "Your appointment was cancelled")
    [call] = transport.calls
    assert sid and sid.startswith("SM")
    assert call["method"] == "POST"
    assert call["url"] == f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"
    assert call["auth"] == (SID, TOKEN)  # requests sends a tuple as Basic auth
    assert call["data"]["To"] == PHONE and call["data"]["From"] == FROM
    assert call["data"]["StatusCallback"] == "https://notify.example/sms/status"
    assert threading.get_ident() not in transport.threads  # never on the loop's thread


async def test_the_base_url_can_point_at_a_stand_in() -> None:
    transport = FakeTransport()
    channel = TwilioSmsChannel(settings(twilio_api_base_url="http://127.0.0.1:9/"), http_client=transport)
    await channel.send(uuid.uuid4(), PHONE, "hi")
    assert transport.calls[0]["url"] == f"http://127.0.0.1:9/2010-04-01/Accounts/{SID}/Messages.json"


@pytest.mark.parametrize(
    ("transport", "permanent"),
    [
        (FakeTransport(400), True),
        (FakeTransport(401), True),
        (FakeTransport(404), True),
        (FakeTransport(408), False),
        (FakeTransport(429), False),
        (FakeTransport(500), False),
        (FakeTransport(503), False),
        (FakeTransport(error=requests.ConnectionError("refused")), False),
        (FakeTransport(error=requests.Timeout("slow")), False),
    ],
)
async def test_refusals_are_permanent_for_4xx_and_retried_otherwise(transport: FakeTransport, permanent: bool) -> None:
    with pytest.raises(DeliveryError) as caught:
        await TwilioSmsChannel(settings(), http_client=transport).send(uuid.uuid4(), PHONE, "hi")
    assert caught.value.permanent is permanent
    assert PHONE not in str(caught.value) and TOKEN not in str(caught.value)
    if transport.status >= 400 and transport.error is None:
        assert str(transport.status) in str(caught.value) and "21211" in str(caught.value)


async def test_sends_are_bounded_and_the_loop_runs_on_while_twilio_is_slow() -> None:
    transport = FakeTransport(hold=0.2)
    channel = TwilioSmsChannel(settings(sms_max_concurrent_sends=2), http_client=transport)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick = asyncio.create_task(ticker())
    started = time.monotonic()
    sids = await asyncio.gather(*(channel.send(uuid.uuid4(), PHONE, "hi") for _ in range(6)))
    elapsed = time.monotonic() - started
    tick.cancel()
    assert len(set(sids)) == 6
    assert transport.most_in_flight == 2  # never more at once than the setting allows
    assert elapsed >= 0.55  # 6 sends of 0.2 s, two at a time
    assert ticks >= 30  # the loop kept turning


async def test_not_configured_is_a_permanent_failure_and_the_setting_picks_the_channel() -> None:
    unconfigured = TwilioSmsChannel(settings(twilio_auth_token=None))
    assert not unconfigured.configured
    with pytest.raises(DeliveryError) as caught:
        await unconfigured.send(uuid.uuid4(), PHONE, "hi")
    assert caught.value.permanent and str(caught.value) == SMS_NOT_CONFIGURED
    assert isinstance(sms_channel(settings(), http=None), TwilioSmsChannel)  # type: ignore[arg-type]
    assert isinstance(sms_channel(NotificationSettings(), http=None), SmsChannel)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "replaces"),
    [
        ("queued", []),
        ("sending", ["accepted", "queued", "scheduled"]),
        ("sent", ["accepted", "queued", "scheduled", "sending"]),
        ("delivered", ["accepted", "queued", "scheduled", "sending", "sent"]),
        ("undelivered", ["accepted", "queued", "scheduled", "sending", "sent"]),
        (
            "read",
            ["accepted", "canceled", "delivered", "failed", "queued", "scheduled", "sending", "sent", "undelivered"],
        ),
    ],
)
def test_a_status_replaces_only_earlier_steps(status: str, replaces: list[str]) -> None:
    assert domain.sms_statuses_before(status) == replaces
    assert status not in domain.sms_statuses_before(status)  # repeated: no change


def test_a_status_that_is_not_twilios_is_refused() -> None:
    with pytest.raises(ValueError):
        domain.sms_statuses_before("teleported")

"""The notification service as a real process against real Kafka, Postgres, an SMTP server
(aiosmtpd) and an SMS provider (a local HTTP server): what patients and practices receive, and
that each message is sent once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from shared.testing import FAILING_PHONE_PREFIX, EventWatcher, Mailbox, ServiceProcess, SmsProvider, iso, unique
from shared.topics import BOOKING_EVENTS, NOTIFICATION_EVENTS, UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def notification(infra: Any, mailbox: Mailbox, sms: SmsProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = ServiceProcess(
        "notification",
        infra.bootstrap,
        infra.admin_dsn,
        tmp_path_factory.mktemp("notification-logs"),
        env={
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(mailbox.port),
            "SMTP_FROM": "practice-notices@clinic.test",
            "SMS_API_URL": sms.url,
            "SMS_API_KEY": "test",
            "DELIVERY_MAX_ATTEMPTS": "2",
            "DELIVERY_RETRY_BASE_SECONDS": "0.2",
            "DELIVERY_POLL_INTERVAL_SECONDS": "0.1",
            "PORTAL_BASE_URL": "https://portal.clinic.test",
        },
    )
    try:
        yield service.start()
    finally:
        service.stop()


# --- helpers -----------------------------------------------------------------------------------

T_START = datetime(2031, 3, 10, 22, 0, tzinfo=UTC)  # Tuesday 11 March 2031, 9:00 am in Sydney (AEDT)


def practice_configured(practice_id: str, **overrides: Any) -> dict[str, Any]:
    data = {
        "practice_id": practice_id,
        "name": "Harbour Dental",
        "timezone": "Australia/Sydney",
        "locale": "en",
        "contact": {"email": f"desk-{practice_id}@clinic.test", "phone": "+61 2 9000 0000", "preferred_channel": "email"},
        "cancellation": {"notify_practice_on_online_cancel": True},
        "pms": {"integration": "none"},
    }
    return data | overrides


def booking_scheduled(
    booking_id: str, practice_id: str, patient: dict[str, Any], starts_at: datetime = T_START
) -> dict[str, Any]:
    return {
        "booking_id": booking_id,
        "practice_id": practice_id,
        "starts_at": iso(starts_at),
        "ends_at": iso(starts_at + timedelta(minutes=30)),
        "practitioner_id": "dr-lee",
        "service_code": "D1110",
        "patient": {"patient_id": unique("pat"), "portal_account": True, "card_on_file": False, **patient},
    }


def booking_cancelled(booking_id: str, practice_id: str, *, actor_kind: str, channel: str, **extra: Any) -> dict[str, Any]:
    return {
        "booking_id": booking_id,
        "request_id": unique("req"),
        "practice_id": practice_id,
        "patient_id": unique("pat"),
        "practitioner_id": "dr-lee",
        "service_code": "D1110",
        "starts_at": iso(T_START),
        "ends_at": iso(T_START + timedelta(minutes=30)),
        "cancelled_at": iso(T_START - timedelta(days=3)),
        "actor": {"kind": actor_kind, "id": unique(actor_kind), "roles": []},
        "channel": channel,
        "status_label": "Cancelled online" if channel == "patient_portal" else "Cancelled",
        "classification": "timely",
        "decision": {
            "allowed": True, "classification": "timely", "charge_card": False,
            "deposit_action": "none", "policy_version": "r1.s1",
        },
        "series_booking_ids": [],
        **extra,
    }


async def wait_for_row(admin_dsn: str, sql: str, *args: Any, timeout: float = 30.0) -> None:
    """Until the service has stored what a test published (topics are consumed in no fixed order)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await conn.fetchval(sql, *args):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"no row for {sql!r} {args} within {timeout}s")
    finally:
        await conn.close()


async def contacts_known(infra: Any, booking_id: str, practice_id: str) -> None:
    await wait_for_row(infra.admin_dsn, "SELECT true FROM notification.patients WHERE booking_id = $1", booking_id)
    await wait_for_row(infra.admin_dsn, "SELECT true FROM notification.practices WHERE practice_id = $1", practice_id)


def outcomes(w: EventWatcher, booking_id: str, type_: str) -> list[Any]:
    return w.matching(lambda s: s.type == type_ and s.data.get("booking_id") == booking_id)


async def until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


# --- the tests -----------------------------------------------------------------------------------


async def test_staff_cancellation_emails_and_texts_the_patient_once(
    infra: Any, publisher: Any, notification: ServiceProcess, mailbox: Mailbox, sms: SmsProvider
) -> None:
    practice_id, booking_id = unique("prac"), unique("bk")
    email, phone = f"ada-{booking_id}@patients.test", "+61 400 123 456"
    async with EventWatcher(infra.bootstrap, [NOTIFICATION_EVENTS]) as w:
        await publisher.event(UPSTREAM_PRACTICES, "practice.configured", practice_id, practice_configured(practice_id))
        await publisher.event(
            UPSTREAM_BOOKINGS, "booking.scheduled", booking_id,
            booking_scheduled(booking_id, practice_id, {"first_name": "Ada", "email": email, "phone": phone, "locale": "en-AU"}),
        )
        await contacts_known(infra, booking_id, practice_id)
        cancelled = booking_cancelled(
            booking_id, practice_id, actor_kind="staff", channel="practice",
            reason_code="illness", reason_text="Dr Lee is unwell today",
        )
        env = await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking_id, cancelled)

        sent = await w.wait_for(
            lambda s: s.type == "notification.sent" and s.data.get("booking_id") == booking_id, count=2
        )
        assert {(s.data["recipient"], s.data["channel"]) for s in sent} == {("patient", "email"), ("patient", "sms")}
        assert {s.data["template"] for s in sent} == {"booking_cancelled_by_staff"}
        by_channel = {s.data["channel"]: s.data["notification_id"] for s in sent}

        # The email arrived, with the reason quoted and the time in the practice's timezone.
        await until(lambda: len(mailbox.to(email)) == 1)
        mail = mailbox.to(email)[0]
        text = mail.get_payload(decode=True).decode()
        assert '"Dr Lee is unwell today"' in text
        assert "Tuesday 11 March 2031, 9:00 am AEDT" in text
        assert "Tuesday 11 March 2031" in mail["Subject"]
        assert mail["Message-ID"] == f"<{by_channel['email']}@clinic.test>"
        assert mail["From"] == "practice-notices@clinic.test"

        # The SMS reached the provider with its idempotency key.
        await until(lambda: len(sms.to(phone)) == 1)
        request = sms.to(phone)[0]
        assert request.headers["idempotency-key"] == by_channel["sms"]
        assert request.headers["authorization"] == "Bearer test"
        assert "Dr Lee is unwell today" in request.form["Body"]

        # The same envelope again (a redelivery): nobody is messaged twice.
        await publisher.raw(BOOKING_EVENTS, booking_id, json.dumps(env).encode())
        await w.settle(3.0)
        assert len(mailbox.to(email)) == 1
        assert len(sms.to(phone)) == 1
        assert len(outcomes(w, booking_id, "notification.sent")) == 2

        # No personal data in what was published.
        published = json.dumps([s.value for s in w.seen if s.data.get("booking_id") == booking_id])
        assert email not in published and phone not in published and "Ada" not in published

    # The read API: statuses, no addresses, no text.
    log = notification.get_json(f"/notifications?booking_id={booking_id}")
    assert sorted((i["recipient"], i["channel"], i["status"]) for i in log["items"]) == [
        ("patient", "email", "sent"),
        ("patient", "sms", "sent"),
    ]
    assert email not in json.dumps(log) and phone not in json.dumps(log)
    assert all("address" not in i and "body" not in i for i in log["items"])


async def test_online_cancellation_confirms_with_rebook_link_and_tells_practice_when_it_asked(
    infra: Any, publisher: Any, notification: ServiceProcess, mailbox: Mailbox, sms: SmsProvider
) -> None:
    practice_id, booking_id = unique("prac"), unique("bk")
    email = f"max-{booking_id}@patients.test"
    async with EventWatcher(infra.bootstrap, [NOTIFICATION_EVENTS]) as w:
        await publisher.event(UPSTREAM_PRACTICES, "practice.configured", practice_id, practice_configured(practice_id, locale="de", timezone="Europe/Berlin"))
        # No phone: the SMS is skipped and recorded, not an error.
        await publisher.event(
            UPSTREAM_BOOKINGS, "booking.scheduled", booking_id,
            booking_scheduled(booking_id, practice_id, {"first_name": "Max", "email": email, "locale": "de-DE"}),
        )
        await contacts_known(infra, booking_id, practice_id)
        await publisher.event(
            BOOKING_EVENTS, "booking.cancelled", booking_id,
            booking_cancelled(booking_id, practice_id, actor_kind="patient", channel="patient_portal"),
        )
        sent = await w.wait_for(lambda s: s.type == "notification.sent" and s.data.get("booking_id") == booking_id, count=2)
        assert {(s.data["recipient"], s.data["channel"]) for s in sent} == {("patient", "email"), ("practice", "email")}

    await until(lambda: len(mailbox.to(email)) == 1)
    text = mailbox.to(email)[0].get_payload(decode=True).decode()
    assert "online abgesagt" in text
    assert f"https://portal.clinic.test/practices/{practice_id}/rebook?booking_id={booking_id}" in text
    assert "Montag, 10. März 2031, 23:00 Uhr (CET)" in text  # 22:00 UTC is 23:00 the day before in Berlin
    office = mailbox.to(f"desk-{practice_id}@clinic.test")
    assert len(office) == 1 and "Max" in office[0].get_payload(decode=True).decode()

    log = notification.get_json(f"/notifications?booking_id={booking_id}")
    skipped = [i for i in log["items"] if i["status"] == "skipped"]
    assert [(i["recipient"], i["channel"], i["reason"]) for i in skipped] == [
        ("patient", "sms", "the patient has no mobile number on file")
    ]


async def test_a_failing_sms_is_retried_with_the_same_key_then_reported_failed(
    infra: Any, publisher: Any, notification: ServiceProcess, mailbox: Mailbox, sms: SmsProvider
) -> None:
    practice_id, booking_id = unique("prac"), unique("bk")
    phone = f"{FAILING_PHONE_PREFIX}{int(time.time() * 1000) % 10**7:07d}"
    async with EventWatcher(infra.bootstrap, [NOTIFICATION_EVENTS]) as w:
        await publisher.event(UPSTREAM_PRACTICES, "practice.configured", practice_id, practice_configured(practice_id))
        await publisher.event(
            UPSTREAM_BOOKINGS, "booking.scheduled", booking_id,
            booking_scheduled(booking_id, practice_id, {"first_name": "Zoe", "phone": phone}),
        )
        await contacts_known(infra, booking_id, practice_id)
        await publisher.event(
            BOOKING_EVENTS, "booking.cancelled", booking_id,
            booking_cancelled(booking_id, practice_id, actor_kind="staff", channel="practice"),
        )
        failed = await w.wait_for(lambda s: s.type == "notification.failed" and s.data.get("booking_id") == booking_id)
        await w.settle(1.0)
        assert len(outcomes(w, booking_id, "notification.failed")) == 1
        assert outcomes(w, booking_id, "notification.sent") == []
        assert failed[0].data["channel"] == "sms"
        assert failed[0].data["error"].startswith("SMS provider answered 503")
        assert phone not in json.dumps(failed[0].value)

    attempts = sms.to(phone)
    assert len(attempts) == 2  # DELIVERY_MAX_ATTEMPTS
    assert {r.headers["idempotency-key"] for r in attempts} == {failed[0].data["notification_id"]}
    log = notification.get_json(f"/notifications?booking_id={booking_id}")
    assert sorted((i["channel"], i["status"], i["attempts"]) for i in log["items"]) == [
        ("email", "skipped", 0),
        ("sms", "failed", 2),
    ]


async def test_a_rejected_portal_cancellation_tells_the_patient_what_to_do(
    infra: Any, publisher: Any, notification: ServiceProcess, mailbox: Mailbox, sms: SmsProvider
) -> None:
    practice_id, booking_id, staff_booking_id = unique("prac"), unique("bk"), unique("bk")
    email = f"eve-{booking_id}@patients.test"
    staff_email = f"sam-{staff_booking_id}@patients.test"
    message = "Please contact the practice to cancel within 48 hours of your appointment."
    async with EventWatcher(infra.bootstrap, [NOTIFICATION_EVENTS]) as w:
        await publisher.event(UPSTREAM_PRACTICES, "practice.configured", practice_id, practice_configured(practice_id))
        await publisher.event(
            UPSTREAM_BOOKINGS, "booking.scheduled", booking_id,
            booking_scheduled(booking_id, practice_id, {"first_name": "Eve", "email": email}),
        )
        # Started an hour ago, so a booking service that happens to run beside this test rejects
        # the staff request below just as this test says it was rejected.
        await publisher.event(
            UPSTREAM_BOOKINGS, "booking.scheduled", staff_booking_id,
            booking_scheduled(
                staff_booking_id, practice_id, {"first_name": "Sam", "email": staff_email},
                starts_at=datetime.now(UTC) - timedelta(hours=1),
            ),
        )
        await contacts_known(infra, booking_id, practice_id)
        await contacts_known(infra, staff_booking_id, practice_id)
        # A staff member's request that was refused: staff see that in their own tool, the
        # patient is not written to.
        staff_request = unique("req")
        await publisher.event(
            UPSTREAM_BOOKINGS, "booking.cancellation_requested", staff_booking_id,
            {"request_id": staff_request, "booking_id": staff_booking_id, "requested_at": iso(datetime.now(UTC)),
             "actor": {"kind": "staff", "id": "staff-1", "roles": ["reception"]}, "channel": "practice"},
        )
        await wait_for_row(infra.admin_dsn, "SELECT true FROM notification.cancellation_requests WHERE request_id = $1", staff_request)
        await publisher.event(
            BOOKING_EVENTS, "booking.cancellation_rejected", staff_booking_id,
            {"booking_id": staff_booking_id, "request_id": staff_request, "reason": "appointment_started",
             "message": "This appointment has already started: record it as a no-show (FTA or DNA) instead of cancelling it."},
        )
        # The patient's own portal request (never seen by us: the reason says who asked).
        await publisher.event(
            BOOKING_EVENTS, "booking.cancellation_rejected", booking_id,
            {"booking_id": booking_id, "request_id": unique("req"), "reason": "within_online_cutoff", "message": message},
        )
        sent = await w.wait_for(lambda s: s.type == "notification.sent" and s.data.get("booking_id") == booking_id)
        assert sent[0].data["template"] == "booking_cancellation_rejected"
        await w.settle(2.0)
        assert w.matching(lambda s: s.data.get("booking_id") == staff_booking_id) == []

    await until(lambda: len(mailbox.to(email)) == 1)
    assert message in mailbox.to(email)[0].get_payload(decode=True).decode()
    assert mailbox.to(staff_email) == []
    assert notification.get_json(f"/notifications?booking_id={staff_booking_id}")["items"] == []

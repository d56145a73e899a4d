"""The notification service as a real process against real Kafka, Postgres, an SMTP server
(aiosmtpd) and an SMS provider (a local HTTP server): what patients, waitlisted patients,
practices and professionals receive, and that each message is sent once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.header import decode_header, make_header
from typing import Any

import asyncpg
import pytest

from shared.testing import (
    FAILING_PHONE_PREFIX,
    EventWatcher,
    Mailbox,
    ServiceProcess,
    SmsProvider,
    dev_token,
    iso,
    unique,
    wait_for_row,
)
from shared.topics import (
    BILLING_EVENTS,
    BOOKING_EVENTS,
    NOTIFICATION_EVENTS,
    PMS_SYNC_EVENTS,
    SCORING_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def notification(
    infra: Any, mailbox: Mailbox, sms: SmsProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
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
# Times and money read as Babel (CLDR) writes them in the reader's locale: a narrow no-break space
# before am/pm in an email body (a subject or an SMS folds it into a space).
NNBSP = "\u202f"


def practice_configured(practice_id: str, **overrides: Any) -> dict[str, Any]:
    data = {
        "practice_id": practice_id,
        "name": "Harbour Dental",
        "timezone": "Australia/Sydney",
        "locale": "en",
        "contact": {"email": f"desk-{practice_id}@clinic.test", "phone": "+61290000000", "preferred_channel": "email"},
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


def booking_cancelled(
    booking_id: str, practice_id: str, *, actor_kind: str, channel: str, **extra: Any
) -> dict[str, Any]:
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
            "allowed": True,
            "classification": "timely",
            "charge_card": False,
            "deposit_action": "none",
            "policy_version": "r1.s1",
        },
        "series_booking_ids": [],
        **extra,
    }


async def contacts_known(infra: Any, booking_id: str, practice_id: str) -> None:
    await wait_for_row(infra.admin_dsn, "SELECT true FROM notification.patients WHERE booking_id = $1", booking_id)
    await wait_for_row(infra.admin_dsn, "SELECT true FROM notification.practices WHERE practice_id = $1", practice_id)


def outcomes(w: EventWatcher, booking_id: str, type_: str) -> list[Any]:
    return w.matching(lambda s: s.type == type_ and s.data.get("booking_id") == booking_id)


# The tests wait on the delivery log, then read every message as our own SMTP server and SMS
# provider received it: a message recorded as sent that never reached them fails the test. (They
# need the consumer group "notification" to themselves, as CI runs them.)

ADMIN_DELIVERIES = (
    "SELECT notification_id::text, recipient, channel, template, status, reason, subject, body"
    " FROM notification.deliveries WHERE {} = $1 ORDER BY created_at, channel"
)


async def deliveries(infra: Any, column: str, value: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(infra.admin_dsn)
    try:
        return await conn.fetch(ADMIN_DELIVERIES.format(column), value)
    finally:
        await conn.close()


async def finished(infra: Any, column: str, value: str, count: int, timeout: float = 40.0) -> list[asyncpg.Record]:
    """The `count` delivery rows of a booking (or professional) once none is pending any more."""
    deadline = time.monotonic() + timeout
    rows: list[asyncpg.Record] = []
    while time.monotonic() < deadline:
        rows = await deliveries(infra, column, value)
        if len(rows) >= count and all(r["status"] != "pending" for r in rows):
            return rows
        await asyncio.sleep(0.2)
    raise AssertionError(f"expected {count} finished deliveries for {column}={value}, have {[dict(r) for r in rows]}")


@dataclass
class Received:
    """A sent message's words; `mail` / `request` is what our own server received, when it did."""

    subject: str | None
    body: str
    mail: Any = None
    request: Any = None


async def received_email(mailbox: Mailbox, address: str, row: asyncpg.Record) -> Received:
    """The sent email of `row`, from our SMTP server when it reached it (with its Message-ID checked)."""
    assert row["status"] == "sent", dict(row)
    for _ in range(20):
        mails = [m for m in mailbox.to(address) if m["Message-ID"].startswith(f"<{row['notification_id']}@")]
        if mails:
            assert len(mails) == 1, [m["Subject"] for m in mails]
            # A long subject arrives folded, a non-ASCII one as RFC 2047 encoded words.
            subject = " ".join(str(make_header(decode_header(mails[0]["Subject"]))).split())
            body = mails[0].get_payload(decode=True).decode().replace("\r\n", "\n")  # SMTP line ends
            return Received(subject, body, mail=mails[0])
        await asyncio.sleep(0.1)
    raise AssertionError(f"email {row['notification_id']} is recorded as sent but never reached our SMTP server")


async def email_text(mailbox: Mailbox, address: str, row: asyncpg.Record) -> tuple[str, str]:
    received = await received_email(mailbox, address, row)
    return received.subject or "", received.body


async def received_sms(sms: SmsProvider, phone: str, row: asyncpg.Record) -> Received:
    """The sent SMS of `row`, from our provider when it reached it (with its idempotency key)."""
    assert row["status"] == "sent", dict(row)
    for _ in range(20):
        requests = [r for r in sms.to(phone) if r.headers.get("idempotency-key") == row["notification_id"]]
        if requests:
            assert len(requests) == 1, [r.form for r in requests]
            return Received(None, requests[0].form["Body"], request=requests[0])
        await asyncio.sleep(0.1)
    raise AssertionError(f"SMS {row['notification_id']} is recorded as sent but never reached our SMS provider")


async def sms_text(sms: SmsProvider, phone: str, row: asyncpg.Record) -> str:
    return (await received_sms(sms, phone, row)).body


def one(rows: list[asyncpg.Record], recipient: str, channel: str) -> asyncpg.Record:
    [row] = [r for r in rows if r["recipient"] == recipient and r["channel"] == channel]
    return row


# --- the tests -----------------------------------------------------------------------------------


async def test_staff_cancellation_emails_and_texts_the_patient_once(
    infra: Any, publisher: Any, notification: ServiceProcess, mailbox: Mailbox, sms: SmsProvider
) -> None:
    practice_id, booking_id = unique("prac"), unique("bk")
    email, phone = f"ada-{booking_id}@patients.test", "+61400123456"
    async with EventWatcher(infra.bootstrap, [NOTIFICATION_EVENTS]) as w:
        await publisher.event(UPSTREAM_PRACTICES, "practice.configured", practice_id, practice_configured(practice_id))
        await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.scheduled",
            booking_id,
            booking_scheduled(
                booking_id, practice_id, {"first_name": "Ada", "email": email, "phone": phone, "locale": "en-AU"}
            ),
        )
        await contacts_known(infra, booking_id, practice_id)
        cancelled = booking_cancelled(
            booking_id,
            practice_id,
            actor_kind="staff",
            channel="practice",
            reason_code="illness",
            reason_text="Dr Lee is unwell today",
        )
        env = await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking_id, cancelled)

        sent = await w.wait_for(
            lambda s: s.type == "notification.sent" and s.data.get("booking_id") == booking_id, count=2
        )
        assert {(s.data["recipient"], s.data["channel"]) for s in sent} == {("patient", "email"), ("patient", "sms")}
        assert {s.data["template"] for s in sent} == {"booking_cancelled_by_staff"}
        by_channel = {s.data["channel"]: s.data["notification_id"] for s in sent}

        rows = await finished(infra, "booking_id", booking_id, 2)

        # The email arrived, with the reason quoted and the time in the practice's timezone.
        received = await received_email(mailbox, email, one(rows, "patient", "email"))
        assert '"Dr Lee is unwell today"' in received.body
        assert f"Tuesday, 11 March 2031, 9:00{NNBSP}am AEDT" in received.body  # the patient's en-AU
        assert "Tuesday, 11 March 2031" in (received.subject or "")
        if received.mail is not None:
            assert received.mail["Message-ID"] == f"<{by_channel['email']}@clinic.test>"
            assert received.mail["From"] == "practice-notices@clinic.test"

        # The SMS reached the provider with its idempotency key.
        received = await received_sms(sms, phone, one(rows, "patient", "sms"))
        assert "Dr Lee is unwell today" in received.body
        if received.request is not None:
            assert received.request.headers["idempotency-key"] == by_channel["sms"]
            assert received.request.headers["authorization"] == "Bearer test"

        # The same envelope again (a redelivery): nobody is messaged twice.
        await publisher.raw(BOOKING_EVENTS, booking_id, json.dumps(env).encode())
        await w.settle(3.0)
        assert len(mailbox.to(email)) <= 1
        assert len(sms.to(phone)) <= 1
        assert len(await deliveries(infra, "booking_id", booking_id)) == 2
        assert len(outcomes(w, booking_id, "notification.sent")) == 2

        # No personal data in what was published.
        published = json.dumps([s.value for s in w.seen if s.data.get("booking_id") == booking_id])
        assert email not in published and phone not in published and "Ada" not in published

    # The read API: statuses, no addresses, no text.
    log = notification.get_json(f"/bookings/{booking_id}/notifications")
    assert sorted((i["recipient"], i["channel"], i["status"]) for i in log["items"]) == [
        ("patient", "email", "sent"),
        ("patient", "sms", "sent"),
    ]
    assert email not in json.dumps(log) and phone not in json.dumps(log)
    assert all("address" not in i and "body" not in i and "subject" not in i for i in log["items"])

    # Only the booking's practice (and ops) reads it; another practice's token finds nothing,
    # and nothing answers without a token.
    own = dev_token(practice_ids=[practice_id], roles=["receptionist"])
    other = dev_token(practice_ids=[unique("prac")], roles=["owner"])
    path = f"/bookings/{booking_id}/notifications"
    assert [notification.get_status(path, token) for token in (None, other, own)] == [401, 404, 200]
    mine = notification.get_json(path, token=own)
    assert mine["booking_id"] == booking_id and {i["practice_id"] for i in mine["items"]} == {practice_id}
    assert notification.get_status(f"/bookings/{unique('bk')}/notifications", dev_token(roles=["ops"])) == 404
    assert notification.get_status("/bookings/not%20an%20id/notifications", own) == 422


async def test_online_cancellation_confirms_with_rebook_link_and_tells_practice_when_it_asked(
    infra: Any, publisher: Any, notification: ServiceProcess, mailbox: Mailbox, sms: SmsProvider
) -> None:
    practice_id, booking_id = unique("prac"), unique("bk")
    email = f"max-{booking_id}@patients.test"
    async with EventWatcher(infra.bootstrap, [NOTIFICATION_EVENTS]) as w:
        await publisher.event(
            UPSTREAM_PRACTICES,
            "practice.configured",
            practice_id,
            practice_configured(practice_id, locale="de", timezone="Europe/Berlin"),
        )
        # No phone: the SMS is skipped and recorded, not an error.
        await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.scheduled",
            booking_id,
            booking_scheduled(booking_id, practice_id, {"first_name": "Max", "email": email, "locale": "de-DE"}),
        )
        await contacts_known(infra, booking_id, practice_id)
        await publisher.event(
            BOOKING_EVENTS,
            "booking.cancelled",
            booking_id,
            booking_cancelled(booking_id, practice_id, actor_kind="patient", channel="patient_portal"),
        )
        sent = await w.wait_for(
            lambda s: s.type == "notification.sent" and s.data.get("booking_id") == booking_id, count=2
        )
        assert {(s.data["recipient"], s.data["channel"]) for s in sent} == {("patient", "email"), ("practice", "email")}

    rows = await finished(infra, "booking_id", booking_id, 3)
    _, text = await email_text(mailbox, email, one(rows, "patient", "email"))
    assert "online abgesagt" in text
    # (the portal's base URL is the recording process's setting: the path is what matters)
    assert f"/practices/{practice_id}/rebook?booking_id={booking_id}" in text
    assert "Montag, 10. März 2031, 23:00 CET" in text  # 22:00 UTC is 23:00 the day before in Berlin
    _, office = await email_text(mailbox, f"desk-{practice_id}@clinic.test", one(rows, "practice", "email"))
    assert "Max" in office

    log = notification.get_json(f"/bookings/{booking_id}/notifications")
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
            UPSTREAM_BOOKINGS,
            "booking.scheduled",
            booking_id,
            booking_scheduled(booking_id, practice_id, {"first_name": "Zoe", "phone": phone}),
        )
        await contacts_known(infra, booking_id, practice_id)
        await publisher.event(
            BOOKING_EVENTS,
            "booking.cancelled",
            booking_id,
            booking_cancelled(booking_id, practice_id, actor_kind="staff", channel="practice"),
        )
        # (long timeout: a notification process of another run may make an attempt with its own,
        # slower, retry settings)
        failed = await w.wait_for(
            lambda s: s.type == "notification.failed" and s.data.get("booking_id") == booking_id, timeout=150
        )
        await w.settle(1.0)
        assert len(outcomes(w, booking_id, "notification.failed")) == 1
        assert outcomes(w, booking_id, "notification.sent") == []
        assert failed[0].data["channel"] == "sms"
        assert failed[0].data["error"].startswith("SMS provider answered 503")
        assert phone not in json.dumps(failed[0].value)

    attempts = sms.to(phone)
    log = notification.get_json(f"/bookings/{booking_id}/notifications")
    assert sorted((i["channel"], i["status"]) for i in log["items"]) == [("email", "skipped"), ("sms", "failed")]
    [tried] = [i for i in log["items"] if i["channel"] == "sms"]
    assert tried["attempts"] >= 2  # DELIVERY_MAX_ATTEMPTS (more if another run's process made some)
    assert 1 <= len(attempts) <= tried["attempts"]
    assert {r.headers["idempotency-key"] for r in attempts} == {failed[0].data["notification_id"]}


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
            UPSTREAM_BOOKINGS,
            "booking.scheduled",
            booking_id,
            booking_scheduled(booking_id, practice_id, {"first_name": "Eve", "email": email}),
        )
        # Started an hour ago, so a booking service that happens to run beside this test rejects
        # the staff request below just as this test says it was rejected.
        await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.scheduled",
            staff_booking_id,
            booking_scheduled(
                staff_booking_id,
                practice_id,
                {"first_name": "Sam", "email": staff_email},
                starts_at=datetime.now(UTC) - timedelta(hours=1),
            ),
        )
        await contacts_known(infra, booking_id, practice_id)
        await contacts_known(infra, staff_booking_id, practice_id)
        # A staff member's request that was refused: staff see that in their own tool, the
        # patient is not written to.
        staff_request = unique("req")
        await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.cancellation_requested",
            staff_booking_id,
            {
                "request_id": staff_request,
                "booking_id": staff_booking_id,
                "requested_at": iso(datetime.now(UTC)),
                "actor": {"kind": "staff", "id": "staff-1", "roles": ["reception"]},
                "channel": "practice",
            },
        )
        await wait_for_row(
            infra.admin_dsn, "SELECT true FROM notification.cancellation_requests WHERE request_id = $1", staff_request
        )
        await publisher.event(
            BOOKING_EVENTS,
            "booking.cancellation_rejected",
            staff_booking_id,
            {
                "booking_id": staff_booking_id,
                "request_id": staff_request,
                "reason": "appointment_started",
                "message": "This appointment has already started: record it as a no-show (FTA or DNA) instead of cancelling it.",
            },
        )
        # The patient's own portal request (never seen by us: the reason says who asked).
        await publisher.event(
            BOOKING_EVENTS,
            "booking.cancellation_rejected",
            booking_id,
            {
                "booking_id": booking_id,
                "request_id": unique("req"),
                "reason": "within_online_cutoff",
                "message": message,
            },
        )
        sent = await w.wait_for(lambda s: s.type == "notification.sent" and s.data.get("booking_id") == booking_id)
        assert sent[0].data["template"] == "booking_cancellation_rejected"
        await w.settle(2.0)
        assert w.matching(lambda s: s.data.get("booking_id") == staff_booking_id) == []

    rows = await finished(infra, "booking_id", booking_id, 2)
    _, text = await email_text(mailbox, email, one(rows, "patient", "email"))
    assert message in text
    assert mailbox.to(staff_email) == []
    assert notification.get_json(f"/bookings/{staff_booking_id}/notifications")["items"] == []


# --- the rest of docs/rules.md#notifications: no-show fees, slot offers, holds, suspension, PMS -------


def no_show_recorded(booking_id: str, practice_id: str, *, charge_card: bool, fee: str = "60.00") -> dict[str, Any]:
    return {
        "booking_id": booking_id,
        "request_id": unique("req"),
        "practice_id": practice_id,
        "patient_id": unique("pat"),
        "party": "patient",
        "code": "FTA",
        "starts_at": iso(T_START),
        "recorded_at": iso(T_START + timedelta(minutes=20)),
        "decision": {
            "allowed": True,
            "classification": "no_show",
            "charge_card": charge_card,
            "deposit_action": "none",
            "policy_version": "r1.s1",
            "fee": {"amount": fee, "currency": "AUD", "code": "D9986", "code_system": "CDT"},
        },
    }


async def _first_charge(infra: Any, booking_id: str) -> str | None:
    conn = await asyncpg.connect(infra.admin_dsn)
    try:
        return await conn.fetchval("SELECT charge_id FROM notification.no_show_fees WHERE booking_id = $1", booking_id)
    finally:
        await conn.close()


def charge_created(booking_id: str, charge_id: str, amount: str = "60.00") -> dict[str, Any]:
    return {
        "charge_id": charge_id,
        "booking_id": booking_id,
        "patient_id": unique("pat"),
        "kind": "no_show",
        "amount": amount,
        "currency": "AUD",
        "code": "D9986",
        "code_system": "CDT",
    }


async def test_a_no_show_fee_is_emailed_to_the_patient_once_with_amount_code_and_how_it_is_paid(
    infra: Any, publisher: Any, notification: ServiceProcess, mailbox: Mailbox
) -> None:
    practice_id = unique("prac")
    card_booking, account_booking = unique("bk"), unique("bk")
    card_email, account_email = f"fay-{card_booking}@patients.test", f"gus-{account_booking}@patients.test"
    await publisher.event(UPSTREAM_PRACTICES, "practice.configured", practice_id, practice_configured(practice_id))
    for booking_id, name, email in ((card_booking, "Fay", card_email), (account_booking, "Gus", account_email)):
        await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.scheduled",
            booking_id,
            booking_scheduled(booking_id, practice_id, {"first_name": name, "email": email, "phone": "+61400555010"}),
        )
        await contacts_known(infra, booking_id, practice_id)

    # The card on file is to be charged: nothing is told before the gateway answered.
    card_charge = unique("ch")
    await publisher.event(
        BOOKING_EVENTS,
        "booking.no_show_recorded",
        card_booking,
        no_show_recorded(card_booking, practice_id, charge_card=True),
    )
    await publisher.event(BILLING_EVENTS, "charge.created", card_booking, charge_created(card_booking, card_charge))
    await wait_for_row(
        infra.admin_dsn,
        "SELECT true FROM notification.no_show_fees WHERE booking_id = $1 AND charge_id IS NOT NULL"
        " AND charge_card IS NOT NULL",
        card_booking,
    )
    await asyncio.sleep(1.0)
    assert await _first_charge(infra, card_booking) == card_charge
    assert await deliveries(infra, "booking_id", card_booking) == []  # waits for the payment outcome
    captured = {"charge_id": card_charge, "booking_id": card_booking, "amount": "60.00", "currency": "AUD"}
    env = await publisher.event(BILLING_EVENTS, "payment.captured", card_booking, captured)

    # Not for the card: outstanding, told as soon as the charge and the decision are both known
    # (the charge first here: the two topics are consumed in no fixed order).
    await publisher.event(
        BILLING_EVENTS, "charge.created", account_booking, charge_created(account_booking, unique("ch"))
    )
    await publisher.event(
        BOOKING_EVENTS,
        "booking.no_show_recorded",
        account_booking,
        no_show_recorded(account_booking, practice_id, charge_card=False),
    )

    [card_row] = await finished(infra, "booking_id", card_booking, 1)
    assert (card_row["recipient"], card_row["channel"], card_row["template"]) == (
        "patient",
        "email",
        "no_show_fee_charged",
    )
    subject, body = await email_text(mailbox, card_email, card_row)
    assert subject == "No-show fee for your appointment on Tuesday, March 11, 2031, 9:00 AM AEDT"
    assert "a no-show fee of A$60.00 applies (code D9986, CDT)" in body
    assert "charged to the card we hold on file" in body

    [account_row] = await finished(infra, "booking_id", account_booking, 1)
    _, body = await email_text(mailbox, account_email, account_row)
    assert "A$60.00" in body and "D9986" in body
    assert "The fee is outstanding on your account." in body

    # The same payment again, and a later payment of the outstanding one: nobody hears twice.
    await publisher.raw(BILLING_EVENTS, card_booking, json.dumps(env).encode())
    await publisher.event(BILLING_EVENTS, "payment.captured", card_booking, captured)
    await asyncio.sleep(2.0)
    assert len(await deliveries(infra, "booking_id", card_booking)) == 1
    assert len(mailbox.to(card_email)) <= 1 and len(mailbox.to(account_email)) <= 1
    # No SMS for a no-show fee: the rule is email only.
    assert notification.get_json(f"/bookings/{card_booking}/notifications")["items"][0]["channel"] == "email"


LATE_FEE = {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}


def late_staff_cancellation(booking_id: str, practice_id: str, review_hours: int) -> dict[str, Any]:
    """A staff cancellation inside the late window with a fee, held for review when `review_hours`."""
    decision = {
        "allowed": True,
        "classification": "late",
        "fee": LATE_FEE,
        "charge_card": False,
        "deposit_action": "none",
        "policy_version": "r1.s1",
        "review_hours": review_hours,
    }
    return booking_cancelled(
        booking_id, practice_id, actor_kind="staff", channel="practice", classification="late", decision=decision
    )


def late_fee(booking_id: str, charge_id: str, status: str, amount: str = "45.00") -> dict[str, Any]:
    """billing's charge.created for a late-cancellation fee: in review, or final (`due`)."""
    data = {
        "charge_id": charge_id,
        "booking_id": booking_id,
        "patient_id": unique("pat"),
        "kind": "late_cancellation",
        "amount": amount,
        "currency": "AUD",
        "code": "D9987",
        "code_system": "CDT",
        "status": status,
    }
    if status == "pending_review":
        data["review_until"] = iso(T_START - timedelta(days=1))
    return data


async def consumed(infra: Any, *envelopes: dict[str, Any]) -> None:
    """Each envelope was handled by the notification service (its id is in the service's inbox)."""
    for env in envelopes:
        await wait_for_row(infra.admin_dsn, "SELECT true FROM notification.inbox WHERE event_id = $1", env["id"])


async def test_a_late_cancellation_fee_is_emailed_once_when_final_after_review_and_never_twice(
    infra: Any, publisher: Any, notification: ServiceProcess, mailbox: Mailbox
) -> None:
    """RULES.md, review before taking money: nobody is told of a fee before it is final. A fee in
    review (the cancellation quoted none) is emailed once when billing announces it due (here,
    edited lower and approved: the final amount), however often that announcement arrives; a fee
    waived in review is never emailed; a fee without review was quoted by the cancellation and is
    not emailed again."""
    practice_id = unique("prac")
    approved, waived, unreviewed = unique("bk"), unique("bk"), unique("bk")
    emails = {b: f"{name}-{b}@patients.test" for b, name in ((approved, "ida"), (waived, "jo"), (unreviewed, "kim"))}
    await publisher.event(UPSTREAM_PRACTICES, "practice.configured", practice_id, practice_configured(practice_id))
    for booking_id, email in emails.items():
        patient = {"first_name": "Ida", "email": email}  # no phone: each cancellation's SMS is skipped
        await publisher.event(
            UPSTREAM_BOOKINGS, "booking.scheduled", booking_id, booking_scheduled(booking_id, practice_id, patient)
        )
        await contacts_known(infra, booking_id, practice_id)

    charges = {b: unique("ch") for b in emails}
    async with EventWatcher(infra.bootstrap, [NOTIFICATION_EVENTS]) as w:
        for booking_id in (approved, waived):
            await publisher.event(
                BOOKING_EVENTS, "booking.cancelled", booking_id, late_staff_cancellation(booking_id, practice_id, 48)
            )
            await publisher.event(
                BILLING_EVENTS,
                "charge.created",
                booking_id,
                late_fee(booking_id, charges[booking_id], "pending_review"),
                source="service/billing",
            )
        await publisher.event(
            BOOKING_EVENTS, "booking.cancelled", unreviewed, late_staff_cancellation(unreviewed, practice_id, 0)
        )
        # The cancellations are told at once: the two in review without a fee, the other with it.
        for booking_id in emails:
            rows = await finished(infra, "booking_id", booking_id, 2)
            _, body = await email_text(mailbox, emails[booking_id], one(rows, "patient", "email"))
            assert ("A$45.00" in body) is (booking_id == unreviewed), (booking_id, body)

        # billing's final word on each: edited to 30.00 and approved (due, announced twice under
        # two envelopes, the first delivered twice); waived in review; due at once without review.
        due = late_fee(approved, charges[approved], "due", amount="30.00")
        env = await publisher.event(BILLING_EVENTS, "charge.created", approved, due, source="service/billing")
        await publisher.raw(BILLING_EVENTS, approved, json.dumps(env).encode())
        again = await publisher.event(BILLING_EVENTS, "charge.created", approved, due, source="service/billing")
        waiver = await publisher.event(
            BILLING_EVENTS,
            "charge.waived",
            waived,
            {"charge_id": charges[waived], "booking_id": waived, "request_id": unique("review")},
            source="service/billing",
        )
        unreviewed_due = await publisher.event(
            BILLING_EVENTS,
            "charge.created",
            unreviewed,
            late_fee(unreviewed, charges[unreviewed], "due"),
            source="service/billing",
        )
        await consumed(infra, env, again, unreviewed_due)  # (an ignored type, the waiver is not kept)
        assert waiver["type"] == "charge.waived"

        rows = await finished(infra, "booking_id", approved, 3)
        [fee_row] = [r for r in rows if r["template"] == "late_cancellation_fee"]
        assert (fee_row["recipient"], fee_row["channel"]) == ("patient", "email")
        subject, body = await email_text(mailbox, emails[approved], fee_row)
        assert subject == "Cancellation fee for your appointment on Tuesday, March 11, 2031, 9:00 AM AEDT"
        assert "a fee of A$30.00 applies (code D9987, CDT)" in body and "45.00" not in body
        await w.wait_for(
            lambda s: (
                s.type == "notification.sent"
                and s.data.get("booking_id") == approved
                and s.data.get("template") == "late_cancellation_fee"
            )
        )

        await w.settle(3.0)
        # The fee in review then waived was read (kept in review, never final).
        await wait_for_row(
            infra.admin_dsn,
            "SELECT true FROM notification.late_fees_in_review WHERE charge_id = $1 AND final_at IS NULL",
            charges[waived],
        )
        # Exactly one fee email, sent once; the waived and the unreviewed fee: no second email.
        assert len(await deliveries(infra, "booking_id", approved)) == 3
        assert len(mailbox.to(emails[approved])) == 2
        for booking_id in (waived, unreviewed):
            rows = await deliveries(infra, "booking_id", booking_id)
            assert [r["template"] for r in rows if r["channel"] == "email"] == ["booking_cancelled_by_staff"]
            assert len(mailbox.to(emails[booking_id])) == 1
        told = [
            s for s in w.seen if s.type == "notification.sent" and s.data.get("template") == "late_cancellation_fee"
        ]
        assert [s.data["booking_id"] for s in told] == [approved]


async def test_a_slot_offer_texts_and_emails_the_waitlisted_patient_with_the_expiry_in_sydney_time(
    infra: Any, publisher: Any, notification: ServiceProcess, mailbox: Mailbox, sms: SmsProvider
) -> None:
    practice_id, booking_id, waitlist_id, offer_id = unique("prac"), unique("bk"), unique("wl"), unique("offer")
    email, phone = f"ivy-{waitlist_id}@patients.test", f"+614{int(time.time() * 1000) % 10**8:08d}"
    expires_at = datetime(2031, 3, 10, 21, 30, tzinfo=UTC)  # 8:30 am in Sydney, half an hour before the slot
    await publisher.event(UPSTREAM_PRACTICES, "practice.configured", practice_id, practice_configured(practice_id))
    await publisher.event(
        UPSTREAM_BOOKINGS,
        "booking.scheduled",
        booking_id,
        booking_scheduled(booking_id, practice_id, {"first_name": "Ann", "email": f"ann-{booking_id}@patients.test"}),
    )
    await publisher.event(
        UPSTREAM_PRACTICES,
        "waitlist.joined",
        practice_id,
        {
            "waitlist_id": waitlist_id,
            "practice_id": practice_id,
            "service_code": "D1110",
            "joined_at": iso(datetime.now(UTC) - timedelta(days=2)),
            "patient": {
                "patient_id": unique("pat"),
                "first_name": "Ivy",
                "email": email,
                "phone": phone,
                "portal_account": True,
                "card_on_file": False,
                "locale": "en-AU",
            },
        },
    )
    await contacts_known(infra, booking_id, practice_id)
    await wait_for_row(
        infra.admin_dsn, "SELECT true FROM notification.waitlist_entries WHERE waitlist_id = $1", waitlist_id
    )

    offer = {"offer_id": offer_id, "booking_id": booking_id, "waitlist_id": waitlist_id, "expires_at": iso(expires_at)}
    async with EventWatcher(infra.bootstrap, [NOTIFICATION_EVENTS]) as w:
        env = await publisher.event(BOOKING_EVENTS, "booking.slot_offered", booking_id, offer)
        sent = await w.wait_for(
            lambda s: s.type in ("notification.sent", "notification.failed") and s.data.get("booking_id") == booking_id,
            count=2,
        )
        assert {(s.type, s.data["recipient"], s.data["channel"], s.data["template"]) for s in sent} == {
            ("notification.sent", "waitlist", "email", "slot_offered"),
            ("notification.sent", "waitlist", "sms", "slot_offered"),
        }
        # A redelivery, and the same offer re-published under a new envelope: one message each way.
        await publisher.raw(BOOKING_EVENTS, booking_id, json.dumps(env).encode())
        await publisher.event(BOOKING_EVENTS, "booking.slot_offered", booking_id, offer)
        await w.settle(3.0)
        assert len(w.matching(lambda s: s.data.get("booking_id") == booking_id)) == 2

    rows = await finished(infra, "booking_id", booking_id, 2)
    assert len(rows) == 2
    text = await sms_text(sms, phone, one(rows, "waitlist", "sms"))
    assert text.startswith("Harbour Dental: an appointment on Tuesday, 11 March 2031, 9:00 am AEDT has come free")
    assert "held for you until Tuesday, 11 March 2031, 8:30 am AEDT" in text  # Ivy's en-AU
    assert f"/practices/{practice_id}/offers/{offer_id}" in text  # the base URL is the recording process's
    subject, body = await email_text(mailbox, email, one(rows, "waitlist", "email"))
    assert subject == "An appointment has come free: Tuesday, 11 March 2031, 9:00 am AEDT"
    assert body.startswith("Hello Ivy,\n")
    assert f"We are holding it for you until Tuesday, 11 March 2031, 8:30{NNBSP}am AEDT." in body
    # The booking's own (cancelled) patient is not the one told.
    assert mailbox.to(f"ann-{booking_id}@patients.test") == []


async def test_a_slot_offer_that_arrives_before_the_waitlist_entry_waits_for_its_contacts(
    infra: Any, publisher: Any, notification: ServiceProcess, mailbox: Mailbox
) -> None:
    """The offer and the entry come on different topics; a missing phone is skipped and said so."""
    practice_id, booking_id, waitlist_id = unique("prac"), unique("bk"), unique("wl")
    email = f"joe-{waitlist_id}@patients.test"
    await publisher.event(
        UPSTREAM_PRACTICES, "practice.configured", practice_id, practice_configured(practice_id, locale="de")
    )
    await publisher.event(
        UPSTREAM_BOOKINGS,
        "booking.scheduled",
        booking_id,
        booking_scheduled(booking_id, practice_id, {"first_name": "Ann"}),
    )
    await contacts_known(infra, booking_id, practice_id)
    offer_id = unique("offer")
    await publisher.event(
        BOOKING_EVENTS,
        "booking.slot_offered",
        booking_id,
        {
            "offer_id": offer_id,
            "booking_id": booking_id,
            "waitlist_id": waitlist_id,
            "expires_at": iso(datetime.now(UTC) + timedelta(minutes=30)),
        },
    )
    await wait_for_row(infra.admin_dsn, "SELECT true FROM notification.slot_offers WHERE offer_id = $1", offer_id)
    assert await deliveries(infra, "booking_id", booking_id) == []
    await publisher.event(
        UPSTREAM_PRACTICES,
        "waitlist.joined",
        practice_id,
        {
            "waitlist_id": waitlist_id,
            "practice_id": practice_id,
            "joined_at": iso(datetime.now(UTC)),
            "patient": {
                "patient_id": unique("pat"),
                "first_name": "Joe",
                "email": email,
                "portal_account": False,
                "card_on_file": False,
            },
        },
    )
    rows = await finished(infra, "booking_id", booking_id, 2)
    skipped = one(rows, "waitlist", "sms")
    assert (skipped["status"], skipped["reason"]) == ("skipped", "the patient has no mobile number on file")
    subject, body = await email_text(mailbox, email, one(rows, "waitlist", "email"))
    assert subject == "Ein Termin ist frei geworden: Dienstag, 11. März 2031, 09:00 AEDT"  # the practice's locale
    assert "Guten Tag Joe," in body
    log = notification.get_json(f"/bookings/{booking_id}/notifications")
    assert sorted((i["recipient"], i["channel"], i["status"]) for i in log["items"]) == [
        ("waitlist", "email", "sent"),
        ("waitlist", "sms", "skipped"),
    ]


async def test_a_failing_sms_for_a_slot_offer_is_retried_then_reported_failed(
    infra: Any, publisher: Any, notification: ServiceProcess, sms: SmsProvider
) -> None:
    """The new rows go through the same sender: retried with one key, then notification.failed."""
    practice_id, booking_id, waitlist_id = unique("prac"), unique("bk"), unique("wl")
    phone = f"{FAILING_PHONE_PREFIX}{(int(time.time() * 1000) + 7) % 10**7:07d}"
    await publisher.event(UPSTREAM_PRACTICES, "practice.configured", practice_id, practice_configured(practice_id))
    await publisher.event(
        UPSTREAM_BOOKINGS,
        "booking.scheduled",
        booking_id,
        booking_scheduled(booking_id, practice_id, {"first_name": "Ann"}),
    )
    await publisher.event(
        UPSTREAM_PRACTICES,
        "waitlist.joined",
        practice_id,
        {
            "waitlist_id": waitlist_id,
            "practice_id": practice_id,
            "joined_at": iso(datetime.now(UTC)),
            "patient": {
                "patient_id": unique("pat"),
                "first_name": "Rex",
                "phone": phone,
                "portal_account": False,
                "card_on_file": False,
            },
        },
    )
    await contacts_known(infra, booking_id, practice_id)
    await wait_for_row(
        infra.admin_dsn, "SELECT true FROM notification.waitlist_entries WHERE waitlist_id = $1", waitlist_id
    )
    async with EventWatcher(infra.bootstrap, [NOTIFICATION_EVENTS]) as w:
        await publisher.event(
            BOOKING_EVENTS,
            "booking.slot_offered",
            booking_id,
            {
                "offer_id": unique("offer"),
                "booking_id": booking_id,
                "waitlist_id": waitlist_id,
                "expires_at": iso(datetime.now(UTC) + timedelta(minutes=30)),
            },
        )
        failed = await w.wait_for(
            lambda s: s.type == "notification.failed" and s.data.get("booking_id") == booking_id, timeout=150
        )
        assert (failed[0].data["recipient"], failed[0].data["channel"], failed[0].data["template"]) == (
            "waitlist",
            "sms",
            "slot_offered",
        )
        assert failed[0].data["error"].startswith("SMS provider answered 503")
        assert phone not in json.dumps(failed[0].value)
    rows = await finished(infra, "booking_id", booking_id, 2)
    assert one(rows, "waitlist", "email")["reason"] == "the patient has no email address on file"
    tried = one(rows, "waitlist", "sms")
    assert tried["status"] == "failed"
    assert {r.headers["idempotency-key"] for r in sms.to(phone)} <= {tried["notification_id"]}


def scheduled_with_professional(
    booking_id: str, practice_id: str, professional_id: str, contact: dict[str, Any] | None
) -> dict[str, Any]:
    data = booking_scheduled(booking_id, practice_id, {"first_name": "Kim"}) | {"professional_id": professional_id}
    if contact is not None:
        data["professional_contact"] = contact
    return data


async def test_a_hold_and_a_suspension_are_emailed_to_the_professional(
    infra: Any, publisher: Any, notification: ServiceProcess, mailbox: Mailbox
) -> None:
    practice_id, booking_id, professional_id = unique("prac"), unique("bk"), unique("pro")
    email = f"noor-{professional_id}@locums.test"
    await publisher.event(UPSTREAM_PRACTICES, "practice.configured", practice_id, practice_configured(practice_id))
    await publisher.event(
        UPSTREAM_BOOKINGS,
        "booking.scheduled",
        booking_id,
        scheduled_with_professional(
            booking_id, practice_id, professional_id, {"first_name": "Noor", "email": email, "locale": "en-AU"}
        ),
    )
    await contacts_known(infra, booking_id, practice_id)
    await wait_for_row(
        infra.admin_dsn, "SELECT true FROM notification.professionals WHERE professional_id = $1", professional_id
    )

    hold_id = unique("hold")
    hold = {
        "hold_id": hold_id,
        "professional_id": professional_id,
        "booking_id": booking_id,
        "cause": "late_cancellation",
        "starts_at": iso(T_START),
        "ends_at": iso(T_START + timedelta(days=7)),
    }
    env = await publisher.event(SCORING_EVENTS, "hold.placed", professional_id, hold)
    [hold_row] = await finished(infra, "professional_id", professional_id, 1)
    subject, body = await email_text(mailbox, email, hold_row)
    assert subject == "Your account is on hold until Tuesday, 18 March 2031, 9:00 am AEDT"  # Noor's en-AU
    assert body.startswith("Hello Noor,\n")
    assert f"from Tuesday, 11 March 2031, 9:00{NNBSP}am AEDT until Tuesday, 18 March 2031, 9:00{NNBSP}am AEDT" in body

    # A redelivery and a re-publication of the same hold: the professional hears once.
    await publisher.raw(SCORING_EVENTS, professional_id, json.dumps(env).encode())
    await publisher.event(SCORING_EVENTS, "hold.placed", professional_id, hold)

    async with EventWatcher(infra.bootstrap, [NOTIFICATION_EVENTS]) as w:
        suspended_at = datetime(2031, 3, 12, 1, 0, tzinfo=UTC)  # 12:00 pm in Sydney
        await publisher.event(
            SCORING_EVENTS,
            "account.suspended",
            professional_id,
            {
                "professional_id": professional_id,
                "holds": [hold_id, unique("hold"), unique("hold")],
                "suspended_at": iso(suspended_at),
            },
        )
        # Without a booking, the outcome is keyed by the professional (CONTRACT.md).
        sent = await w.wait_for(lambda s: s.type == "notification.sent" and s.key == professional_id)
        assert sent[0].data["template"] == "account_suspended" and sent[0].data["recipient"] == "professional"
        assert "booking_id" not in sent[0].data

    rows = await finished(infra, "professional_id", professional_id, 2)
    assert [r["template"] for r in rows] == ["hold_placed", "account_suspended"]
    for _ in range(30):
        if len(mailbox.to(email)) >= 2 or rows[1]["status"] != "sent":
            break
        await asyncio.sleep(0.1)
    suspension = [m for m in mailbox.to(email) if m["Message-ID"].startswith(f"<{rows[1]['notification_id']}@")]
    body = suspension[0].get_payload(decode=True).decode() if suspension else rows[1]["body"]
    assert f"Your account was suspended on Wednesday, 12 March 2031, 12:00{NNBSP}pm AEDT, after 3 holds" in body
    assert len(mailbox.to(email)) <= 2

    log = notification.get_json(f"/professionals/{professional_id}/notifications")
    assert [(i["template"], i["recipient"], i["channel"], i["status"]) for i in log["items"]] == [
        ("hold_placed", "professional", "email", "sent"),
        ("account_suspended", "professional", "email", "sent"),
    ]
    assert email not in json.dumps(log)
    second = notification.get_json(f"/professionals/{professional_id}/notifications?page=2&page_size=1")
    assert (second["page"], second["page_size"]) == (2, 1)
    assert [i["template"] for i in second["items"]] == ["account_suspended"]

    # A professional works across offices: their notices are for ops only.
    path = f"/professionals/{professional_id}/notifications"
    own = dev_token(practice_ids=[practice_id], roles=["owner"])
    assert [notification.get_status(path, token) for token in (None, own)] == [401, 403]
    ops = dev_token(roles=["ops"])
    assert notification.get_status(f"/professionals/{unique('pro')}/notifications", ops) == 404
    assert notification.get_status(f"{path}?page_size=501", ops) == 422


async def test_a_professional_without_a_known_email_is_skipped_and_said_so(
    infra: Any, publisher: Any, notification: ServiceProcess
) -> None:
    practice_id, booking_id = unique("prac"), unique("bk")
    no_email, unknown = unique("pro"), unique("pro")
    await publisher.event(UPSTREAM_PRACTICES, "practice.configured", practice_id, practice_configured(practice_id))
    await publisher.event(
        UPSTREAM_BOOKINGS,
        "booking.scheduled",
        booking_id,
        scheduled_with_professional(booking_id, practice_id, no_email, {"first_name": "Ola", "phone": "+61400555020"}),
    )
    await wait_for_row(
        infra.admin_dsn, "SELECT true FROM notification.professionals WHERE professional_id = $1", no_email
    )
    for professional_id in (no_email, unknown):
        await publisher.event(
            SCORING_EVENTS,
            "hold.placed",
            professional_id,
            {
                "hold_id": unique("hold"),
                "professional_id": professional_id,
                "booking_id": booking_id,
                "cause": "no_show",
                "starts_at": iso(T_START),
                "ends_at": iso(T_START + timedelta(days=14)),
            },
        )
    [row] = await finished(infra, "professional_id", no_email, 1)
    assert (row["status"], row["reason"]) == ("skipped", "no email address is known for this professional")
    [row] = await finished(infra, "professional_id", unknown, 1)
    assert (row["status"], row["reason"]) == ("skipped", "no contact details are known for this professional")
    # The service went on: it is still ready and the skipped notices are in the read API.
    assert notification.get_json(f"/professionals/{no_email}/notifications")["items"][0]["status"] == "skipped"


async def test_a_manual_pms_update_is_told_to_the_practice(
    infra: Any, publisher: Any, notification: ServiceProcess, mailbox: Mailbox
) -> None:
    practice_id, booking_id = unique("prac"), unique("bk")
    await publisher.event(
        UPSTREAM_PRACTICES,
        "practice.configured",
        practice_id,
        practice_configured(practice_id, pms={"integration": "manual"}),
    )
    await publisher.event(
        UPSTREAM_BOOKINGS,
        "booking.scheduled",
        booking_id,
        booking_scheduled(booking_id, practice_id, {"first_name": "Lea"}),
    )
    await contacts_known(infra, booking_id, practice_id)
    message = "Manual update required: cancel this booking in your PMS too"
    manual = {
        "booking_id": booking_id,
        "practice_id": practice_id,
        "integration": "manual",
        "action": "cancel_booking",
        "message": message,
    }
    env = await publisher.event(PMS_SYNC_EVENTS, "pms.manual_update_required", booking_id, manual)
    [row] = await finished(infra, "booking_id", booking_id, 1)
    assert (row["recipient"], row["channel"], row["template"]) == ("practice", "email", "pms_manual_update_required")
    subject, body = await email_text(mailbox, f"desk-{practice_id}@clinic.test", row)
    assert subject == "Manual update required: cancel this booking in your PMS"
    assert body.startswith(message + "\n")
    assert "Patient: Lea" in body and f"Appointment: Tuesday, March 11, 2031, 9:00{NNBSP}AM AEDT" in body

    await publisher.raw(PMS_SYNC_EVENTS, booking_id, json.dumps(env).encode())
    await publisher.event(PMS_SYNC_EVENTS, "pms.manual_update_required", booking_id, manual)
    await asyncio.sleep(2.0)
    assert len(await deliveries(infra, "booking_id", booking_id)) == 1
    assert len(mailbox.to(f"desk-{practice_id}@clinic.test")) <= 1

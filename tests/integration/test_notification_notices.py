"""notification's second-release notices as a real process with real Kafka, Postgres and SMTP:
the practice told of a suspected no-show and of a patient's standing moving, the professional of
turn-away pay owed and of a reinstatement — each email sent once, however often its event comes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_notification_service import (
    T_START,
    booking_cancelled,
    contacts_known,
    email_text,
    finished,
    practice_configured,
    scheduled_with_professional,
)

from shared.testing import Mailbox, ServiceProcess, SmsProvider, iso, unique, wait_for_row
from shared.topics import BOOKING_EVENTS, SCORING_EVENTS, UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def notices(
    infra: Any, mailbox: Mailbox, sms: SmsProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    service = ServiceProcess(
        "notification",
        infra.bootstrap,
        infra.admin_dsn,
        tmp_path_factory.mktemp("notification-notices-logs"),
        env={
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(mailbox.port),
            "SMTP_FROM": "practice-notices@clinic.test",
            "SMS_API_URL": sms.url,
            "SMS_API_KEY": "test",
            "DELIVERY_POLL_INTERVAL_SECONDS": "0.1",
        },
    )
    try:
        yield service.start()
    finally:
        service.stop()


async def test_the_second_release_notices_are_sent_once_each(
    infra: Any, publisher: Any, notices: ServiceProcess, mailbox: Mailbox
) -> None:
    practice_id, booking_id, professional_id = unique("prac"), unique("bk"), unique("pro")
    desk, noor = f"desk-{practice_id}@clinic.test", f"noor-{professional_id}@locums.test"
    await publisher.event(UPSTREAM_PRACTICES, "practice.configured", practice_id, practice_configured(practice_id))
    await publisher.event(
        UPSTREAM_BOOKINGS,
        "booking.scheduled",
        booking_id,
        scheduled_with_professional(booking_id, practice_id, professional_id, {"first_name": "Noor", "email": noor}),
    )
    await contacts_known(infra, booking_id, practice_id)
    await wait_for_row(
        infra.admin_dsn, "SELECT true FROM notification.professionals WHERE professional_id = $1", professional_id
    )
    patient_id = unique("pat")
    suspected = {"booking_id": booking_id, "practice_id": practice_id, "starts_at": iso(T_START), "grace_minutes": 15}
    standing = {
        "patient_id": patient_id,
        "practice_id": practice_id,
        "standing": "deposit_required",
        "previous": "good",
        "count": 2,
        "window_days": 365,
        "reason": "3 no-shows or late cancellations at this practice in the last 365 days (the first forgiven).",
    }
    reinstated = {"professional_id": professional_id, "reinstated_at": iso(datetime(2031, 3, 12, 1, 0, tzinfo=UTC))}
    cancelled = booking_cancelled(
        booking_id, practice_id, actor_kind="staff", channel="practice", professional_id=professional_id
    )
    cancelled["decision"] |= {
        "classification": "late",
        "office_score_delta": -50,
        "office_cause": "late_cancelled_professional",
        "turnaway_pay": {"amount": "90.00", "currency": "AUD"},
    }
    standing_at = datetime.now(UTC) - timedelta(minutes=1)  # the move's own time: the same both times
    for _ in range(2):  # every fact twice, under new envelope ids: each told once
        await publisher.event(BOOKING_EVENTS, "booking.no_show_suspected", booking_id, suspected)
        await publisher.event(SCORING_EVENTS, "patient.standing_changed", patient_id, standing, time=standing_at)
        await publisher.event(SCORING_EVENTS, "account.reinstated", professional_id, reinstated)
    await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking_id, cancelled)

    # The desk twice, the patient's email and SMS (skipped: no address), turn-away pay and the
    # reinstatement (written in this practice's time, the professional's practice).
    practice_rows = await finished(infra, "practice_id", practice_id, 6)
    templates = sorted(r["template"] for r in practice_rows)
    assert templates.count("no_show_suspected") == 1 and templates.count("patient_standing_changed") == 1
    assert templates.count("turnaway_pay_owed") == 1
    professional_rows = await finished(infra, "professional_id", professional_id, 4)
    assert sorted(r["template"] for r in professional_rows if r["recipient"] == "professional") == [
        "account_reinstated",
        "turnaway_pay_owed",
    ]

    def row(template: str) -> Any:
        # A professional's turn-away pay row is both the practice's and the professional's: one row.
        rows = {r["notification_id"]: r for r in [*practice_rows, *professional_rows] if r["template"] == template}
        [found] = rows.values()
        return found

    subject, body = await email_text(mailbox, desk, row("no_show_suspected"))
    assert subject == f"Did the patient come? Booking {booking_id}" and "15 minutes after its start" in body
    subject, _ = await email_text(mailbox, desk, row("patient_standing_changed"))
    assert subject == f"Patient {patient_id}: deposit required"
    subject, body = await email_text(mailbox, noor, row("turnaway_pay_owed"))
    assert subject == "Turn-away pay owed to you: A$90.00" and body.startswith("Hello Noor,")
    subject, body = await email_text(mailbox, noor, row("account_reinstated"))
    assert subject == "Your account has been reinstated"
    assert len(mailbox.to(noor)) == 2 and len([m for m in mailbox.to(desk) if "Did the patient" in m["Subject"]]) == 1

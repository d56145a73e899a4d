"""billing's turn-away pay as a real process on the real broker and Postgres: a staff
cancellation of a booked professional whose decision carries turnaway_pay is owed once
(turnaway_pay.owed, however often the cancellation is delivered) and shown to the practice's
fee roles; a patient's cancellation owes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.contracts.booking import BookingCancelled
from shared.contracts.common import Actor, Decision
from shared.testing import EventWatcher, ServiceProcess, dev_token, iso, unique
from shared.topics import BILLING_EVENTS, BOOKING_EVENTS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def billing(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    log_dir: Path = tmp_path_factory.mktemp("billing-turnaway-logs")
    process = ServiceProcess("billing", infra.bootstrap, infra.admin_dsn, log_dir)
    try:
        process.start()
        yield process
    finally:
        process.stop()


def cancelled(practice_id: str, actor: str, at: datetime) -> dict[str, Any]:
    return BookingCancelled.new(
        booking_id=unique("bk"),
        request_id=unique("req"),
        practice_id=practice_id,
        patient_id=unique("pat"),
        professional_id=unique("pro"),
        practitioner_id="dr-1",
        service_code="D1110",
        starts_at=at + timedelta(hours=5),
        ends_at=at + timedelta(hours=13),
        cancelled_at=at,
        actor=Actor.new(kind=actor, id=unique(actor)),
        channel="practice" if actor == "staff" else "patient_portal",
        status_label="Cancelled",
        classification="late",
        decision=Decision.new(
            allowed=True,
            classification="late",
            charge_card=False,
            deposit_action="none",
            policy_version="r1.s1",
            office_score_delta=-50 if actor == "staff" else None,
            office_cause="late_cancelled_professional" if actor == "staff" else None,
            turnaway_pay={"amount": "90.00", "currency": "AUD"},
        ),
    ).to_json_dict()


async def test_turnaway_pay_is_owed_once_and_reported(billing, infra, publisher):
    practice_id, now = unique("practice"), datetime.now(UTC)
    by_staff, by_patient = cancelled(practice_id, "staff", now), cancelled(practice_id, "patient", now)
    keys = (by_staff["booking_id"], by_patient["booking_id"])
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        for event in (by_staff, by_staff, by_patient):  # the staff one twice: a redelivery
            await publisher.event(BOOKING_EVENTS, "booking.cancelled", event["booking_id"], event)
        [owed] = await w.wait_for(lambda s: s.type == "turnaway_pay.owed" and s.key in keys)
        await w.settle(2.0)
        every = w.matching(lambda s: s.type == "turnaway_pay.owed" and s.key in keys)

    assert owed.key == by_staff["booking_id"]
    assert owed.data == {
        "booking_id": by_staff["booking_id"],
        "practice_id": practice_id,
        "professional_id": by_staff["professional_id"],
        "amount": "90.00",
        "currency": "AUD",
    }
    assert len(every) == 1
    period = f"from={iso(now - timedelta(hours=1))}&to={iso(now + timedelta(hours=1))}"
    token = dev_token(practice_ids=[practice_id], roles=["manager"])
    [item] = billing.get_json(f"/practices/{practice_id}/turnaway-pay?{period}", token)["items"]
    assert (item["booking_id"], item["amount"], item["currency"]) == (by_staff["booking_id"], "90.00", "AUD")
    assert billing.get_json(f"/reports/turnaway-pay?{period}", token) == [
        {"practice_id": practice_id, "currency": "AUD", "bookings": 1, "amount": "90.00"}
    ]
    assert (
        billing.get_status(
            f"/practices/{practice_id}/turnaway-pay?{period}",
            dev_token(practice_ids=[practice_id], roles=["receptionist"]),
        )
        == 403
    )

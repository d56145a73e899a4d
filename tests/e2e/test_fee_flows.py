"""RULES.md's second-release fee flows through all six services as separate processes, on the
real broker and database, with a real SMTP server, a local SMS provider and billing's sandbox
gateway: a late cancellation whose fee waits for staff review (`fees.review_hours`), edited
lower in review (which approves it), charged to the card registered on `upstream.patients.v1`,
lowered again later: the difference refunded (`payment.refunded`), the patient emailed about
the refund, the PMS sent the fee as it now is (`pms.update_fee`). Each event exactly once, and
nobody told of the fee before it is final: no capture, no PMS fee, no message quoting it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from shared.testing import EventWatcher, iso, unique, wait_for_row
from shared.topics import (
    BILLING_COMMANDS,
    BILLING_EVENTS,
    BOOKING_EVENTS,
    NOTIFICATION_EVENTS,
    PMS_SYNC_ACKS,
    PMS_SYNC_EVENTS,
    POLICY_DECISIONS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PATIENTS,
    UPSTREAM_PRACTICES,
)

from .stories import LATE_FEE, ann_booked, harbour_dental

pytestmark = pytest.mark.e2e

PRAKTIKA = "pms-sync.praktika.v1"
WATCHED = [POLICY_DECISIONS, BOOKING_EVENTS, BILLING_EVENTS, NOTIFICATION_EVENTS, PRAKTIKA, PMS_SYNC_EVENTS]
FEE = LATE_FEE
MANAGER = {"id": "staff-mia", "roles": ["manager"]}


def _body(message) -> str:
    part = message if not message.is_multipart() else message.get_payload(0)
    return part.get_payload(decode=True).decode()


async def _mails_to(mailbox, address: str, count: int, timeout: float = 60.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if len(found := mailbox.to(address)) >= count:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"fewer than {count} emails for the patient within {timeout}s")


async def test_a_fee_reviewed_charged_and_lowered_later_is_refunded_told_and_synced_once(
    system, infra, publisher, mailbox, sms
):
    practice_id, booking_id, patient_id = unique("practice"), unique("booking"), unique("patient")
    email, phone = f"{patient_id}@patients.test", f"+61400{int(patient_id[-6:], 16) % 10**6:06d}"
    starts = datetime.now(UTC) + timedelta(hours=6)

    async with EventWatcher(infra.bootstrap, WATCHED) as w:
        await publisher.event(
            UPSTREAM_PRACTICES,
            "practice.configured",
            practice_id,
            harbour_dental(
                practice_id, fees={"late_cancellation": FEE, "charge_card_on_file": True, "review_hours": 24}
            ),
        )
        await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.scheduled",
            booking_id,
            # The policy charges a card only when it knows of one: the one registered below on
            # upstream.patients.v1 wins over the booking's card_on_file flag.
            ann_booked(booking_id, practice_id, patient_id, starts, patient={"email": email, "phone": phone}),
        )
        await publisher.event(
            UPSTREAM_PATIENTS,
            "patient.card_registered",
            patient_id,
            {
                "patient_id": patient_id,
                "practice_id": practice_id,
                "gateway": "sandbox",
                "customer_ref": f"cus_{patient_id}",
                "payment_method_ref": f"pm_{patient_id}",
                "registered_at": iso(datetime.now(UTC)),
                "brand": "visa",
                "last4": "4242",
            },
        )
        for sql in (
            "SELECT true FROM cancellation_policy.practice_settings WHERE practice_id = $1",
            "SELECT true FROM pms_sync.integrations WHERE practice_id = $1",
            "SELECT true FROM billing.practice_cards WHERE practice_id = $1",
            "SELECT true FROM notification.practices WHERE practice_id = $1",
        ):
            await wait_for_row(infra.admin_dsn, sql, practice_id)
        await wait_for_row(infra.admin_dsn, "SELECT true FROM booking.bookings WHERE booking_id = $1", booking_id)

        request = await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.cancellation_requested",
            booking_id,
            {
                "request_id": unique("request"),
                "booking_id": booking_id,
                "requested_at": iso(datetime.now(UTC)),
                "actor": {"kind": "staff", "id": "staff-7", "roles": ["reception"]},
                "channel": "practice",
                "reason_code": "illness",
                "reason_text": "Dr Lee is unwell today",
            },
        )

        def of(type_: str, **data):
            return lambda s: (
                s.type == type_ and s.key == booking_id and all(s.data.get(k) == v for k, v in data.items())
            )

        # --- the fee waits for review: nothing taken, nobody told ----------------------------
        [decision] = await w.wait_for(
            lambda s: s.type == "cancellation.assessed" and s.value.get("correlationid") == request["id"], timeout=60
        )
        assert decision.data["classification"] == "late" and decision.data["review_hours"] == 24
        [pending] = await w.wait_for(of("charge.created", status="pending_review"), timeout=60)
        charge_id = pending.data["charge_id"]
        assert (pending.data["amount"], pending.data["review_until"] is not None) == ("45.00", True)
        [cancelled] = await w.wait_for(of("booking.cancelled"), timeout=60)
        assert cancelled.data["decision"]["review_hours"] == 24, cancelled.data["decision"]
        [cancel] = await w.wait_for(of("pms.cancel_booking"), timeout=60)
        assert "fee" not in cancel.data  # the PMS is not told a fee still in review
        await publisher.event(
            PMS_SYNC_ACKS,
            "pms.sync_acknowledged",
            booking_id,
            {"sync_id": cancel.data["sync_id"], "booking_id": booking_id, "status": "ok"},
            source="pms/praktika",
        )
        [first_mail] = await _mails_to(mailbox, email, 1)  # the cancellation itself, quoting no fee
        await w.settle(2.0)
        assert "45.00" not in _body(first_mail) and "45,00" not in _body(first_mail)
        assert w.matching(of("payment.captured")) == [] and w.matching(of("pms.update_fee")) == []

        # --- staff edit it lower in review: that approves it; the card is charged ------------
        await publisher.event(
            BILLING_COMMANDS,
            "charge.review_decided",
            charge_id,
            {
                "request_id": unique("review"),
                "charge_id": charge_id,
                "actor": MANAGER,
                "decision": "edit",
                "amount": "30.00",
                "note": "first late cancellation",
            },
        )
        [edited] = await w.wait_for(
            of_charge := (lambda s: s.type == "charge.adjusted" and s.key == booking_id), timeout=60
        )
        assert (edited.data["before"]["amount"], edited.data["after"]["amount"]) == ("45.00", "30.00")
        [due] = await w.wait_for(of("charge.created", status="due"), timeout=60)
        assert (due.data["charge_id"], due.data["amount"]) == (charge_id, "30.00")
        [captured] = await w.wait_for(of("payment.captured"), timeout=60)
        assert (captured.data["charge_id"], captured.data["amount"]) == (charge_id, "30.00")
        [final] = await w.wait_for(of("pms.update_fee"), timeout=60)  # the PMS hears of it once final
        assert final.data["fee"] == {**FEE, "amount": "30.00"} and final.data["charge_id"] == charge_id
        await publisher.event(
            PMS_SYNC_ACKS,
            "pms.sync_acknowledged",
            booking_id,
            {"sync_id": final.data["sync_id"], "booking_id": booking_id, "status": "ok"},
            source="pms/praktika",
        )
        # The patient hears of the fee now that it is final, at the edited amount, by email once.
        fee_mail = _body((await _mails_to(mailbox, email, 2))[1])
        assert "30.00" in fee_mail and "45.00" not in fee_mail
        await w.wait_for(of("notification.sent", template="late_cancellation_fee"), timeout=60)

        # --- lowered again later: the difference goes back to the card ----------------------
        await publisher.event(
            BILLING_COMMANDS,
            "charge.adjustment_requested",
            charge_id,
            {"request_id": unique("adjust"), "charge_id": charge_id, "actor": MANAGER, "amount": "20.00"},
        )
        [refunded] = await w.wait_for(of("payment.refunded"), timeout=60)
        assert (refunded.data["charge_id"], refunded.data["amount"], refunded.data["currency"]) == (
            charge_id,
            "10.00",
            "AUD",
        )
        assert refunded.data["reason"] == "adjustment"
        lowered = await w.wait_for(of("pms.update_fee"), count=2, timeout=60)
        assert (
            lowered[-1].data["fee"] == {**FEE, "amount": "20.00"}
            and lowered[-1].data["sync_id"] != final.data["sync_id"]
        )
        await publisher.event(
            PMS_SYNC_ACKS,
            "pms.sync_acknowledged",
            booking_id,
            {"sync_id": lowered[-1].data["sync_id"], "booking_id": booking_id, "status": "ok"},
            source="pms/praktika",
        )
        mails = await _mails_to(mailbox, email, 3)
        refund_mail = _body(mails[-1])
        assert "10.00" in refund_mail and "45.00" not in refund_mail
        await w.wait_for(of("notification.sent", template="fee_refunded"), timeout=60)

        # --- each once ------------------------------------------------------------------------
        await w.settle(4.0)
        assert len(w.matching(of("charge.created", status="pending_review"))) == 1
        assert len(w.matching(of("charge.created", status="due"))) == 1
        assert [s.data["after"]["amount"] for s in w.matching(of_charge)] == ["30.00", "20.00"]
        assert len(w.matching(of("payment.captured"))) == 1 and w.matching(of("payment.failed")) == []
        assert len(w.matching(of("payment.refunded"))) == 1
        assert len(w.matching(of("pms.cancel_booking"))) == 1
        assert [s.data["fee"]["amount"] for s in w.matching(of("pms.update_fee"))] == ["30.00", "20.00"]
        assert len(w.matching(of("pms.sync_completed"))) == 3 and w.matching(of("pms.sync_failed")) == []
        assert len(w.matching(of("notification.sent", template="fee_refunded"))) == 1
        assert len(w.matching(of("notification.sent", template="late_cancellation_fee"))) == 1
        assert w.matching(lambda s: s.key == booking_id and s.type == "notification.failed") == []
        assert len(mailbox.to(email)) == 3  # the cancellation (no fee), the final fee, the refund
        for message in mailbox.to(email) + mailbox.to("frontdesk@harbour.test"):
            assert "45.00" not in _body(message)  # the fee in review was quoted to nobody
        for seen in w.matching(lambda s: s.key == booking_id and s.topic in (BILLING_EVENTS, PRAKTIKA)):
            assert email not in str(seen.value) and phone not in str(seen.value)

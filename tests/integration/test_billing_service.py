"""The billing service as a real process against the real broker and Postgres: cancellations and
no-shows on booking.events.v1 become charges, card payments through the sandbox gateway, deposit
refunds, kept deposits and credit notes on billing.events.v1, each audited; role-checked charge
adjustments on billing.commands.v1 are answered once each, with before and after, and audited; a
duplicate delivery charges once; a payload that breaks the contract lands in dlq.billing.v1; a
gateway that cannot work stops the service at startup. (Stripe: test_billing_stripe.py.)"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from billing import capture, repository, turnaway
from billing.domain import charge_id, credit_note_id, movement_id
from billing.gateway import GatewayUnavailable, PaymentResult, SandboxGateway
from billing.handlers import BillingDeps
from billing.settings import BillingSettings
from shared import background
from shared.consumer import Unit
from shared.contracts.base import Money
from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.common import Actor, Decision, Fee
from shared.contracts.envelope import new_envelope, parse_envelope
from shared.contracts.registry import models_for
from shared.testing import EventWatcher, Publisher, ScratchSchemas, ServiceProcess, dev_token, unique
from shared.topics import BILLING_COMMANDS, BILLING_EVENTS, BOOKING_EVENTS, dead_letter_topic

pytestmark = pytest.mark.integration

DLQ = dead_letter_topic("billing")
START = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "billing" / "migrations"


@pytest.fixture(scope="module")
def billing(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One billing process for the module (the tests use unique ids, so they share it)."""
    log_dir: Path = tmp_path_factory.mktemp("billing-logs")
    process = ServiceProcess(
        "billing", infra.bootstrap, infra.admin_dsn, log_dir, env={"CAPTURE_POLL_INTERVAL_SECONDS": "0.1"}
    )
    try:
        process.start()
        yield process
    finally:
        process.stop()


def decision(
    classification: str,
    *,
    fee: tuple[str, str, str] | None = None,
    charge_card: bool = False,
    deposit_action: str = "none",
) -> Decision:
    return Decision.new(
        allowed=True,
        classification=classification,
        fee=Fee.new(amount=Decimal(fee[0]), currency=fee[1], code=fee[2], code_system="CDT") if fee else None,
        charge_card=charge_card,
        deposit_action=deposit_action,
        policy_version="r1.s2",
        explanation="Cancelled 5 h before the start; late window 24 h: late.",
    )


def cancelled(
    booking_id: str,
    practice_id: str,
    patient_id: str,
    the_decision: Decision,
    *,
    deposit: tuple[str, str] | None = None,
    actor: Actor | None = None,
) -> dict[str, Any]:
    actor = actor or Actor.new(kind="staff", id=unique("staff"), roles=["reception"])
    return BookingCancelled.new(
        booking_id=booking_id,
        request_id=unique("req"),
        practice_id=practice_id,
        patient_id=patient_id,
        practitioner_id=unique("dr"),
        service_code="D1110",
        starts_at=START,
        ends_at=START + timedelta(minutes=45),
        cancelled_at=START - timedelta(hours=5),
        actor=actor,
        channel="professional_app" if actor.kind == "professional" else "practice",
        status_label="Cancelled",
        reason_code="illness",
        classification=the_decision.classification,
        decision=the_decision,
        deposit=Money.new(amount=Decimal(deposit[0]), currency=deposit[1]) if deposit else None,
    ).to_json_dict()


def no_show(
    booking_id: str,
    practice_id: str,
    patient_id: str,
    the_decision: Decision,
    *,
    deposit: tuple[str, str] | None = None,
) -> dict[str, Any]:
    return BookingNoShowRecorded.new(
        booking_id=booking_id,
        request_id=unique("req"),
        practice_id=practice_id,
        patient_id=patient_id,
        party="patient",
        code="FTA",
        starts_at=START,
        recorded_at=START + timedelta(minutes=20),
        decision=the_decision,
        deposit=Money.new(amount=Decimal(deposit[0]), currency=deposit[1]) if deposit else None,
    ).to_json_dict()


def on(booking_id: str, type_: str):
    return lambda s: s.topic == BILLING_EVENTS and s.key == booking_id and s.type == type_


async def test_late_cancellation_raises_an_outstanding_charge_and_keeps_the_deposit(
    billing: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    practice, patient, booking = unique("practice"), unique("pat"), unique("bk")
    data = cancelled(
        booking,
        practice,
        patient,
        decision("late", fee=("45.00", "AUD", "D9987"), deposit_action="keep"),
        deposit=("20.00", "AUD"),
    )
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data, source="service/booking")
        [created] = await w.wait_for(on(booking, "charge.created"))
        [kept] = await w.wait_for(on(booking, "deposit.kept"))
        await w.settle(1.5)
        assert not w.matching(lambda s: s.key == booking and s.type.startswith("payment."))  # no card charge

    expected_id = charge_id(booking, data["request_id"])
    assert created.data == {
        "charge_id": expected_id,
        "booking_id": booking,
        "patient_id": patient,
        "kind": "late_cancellation",
        "amount": "45.00",
        "currency": "AUD",
        "code": "D9987",
        "code_system": "CDT",
        "status": "due",  # no review window: final at once
    }
    assert kept.data == {"booking_id": booking, "amount": "20.00", "currency": "AUD"}

    record = billing.get_json(f"/bookings/{booking}/billing")
    [charge] = record["charges"]
    assert (charge["charge_id"], charge["status"], charge["amount"], charge["practice_id"]) == (
        expected_id,
        "outstanding",
        "45.00",
        practice,
    )
    assert [(d["outcome"], d["amount"]) for d in record["deposits"]] == [("kept", "20.00")]
    assert [(a["action"], a["actor"], a["amount"]) for a in record["audit"]] == [
        ("charge_created", data["actor"]["kind"] + ":" + data["actor"]["id"], "45.00"),
        ("deposit_kept", data["actor"]["kind"] + ":" + data["actor"]["id"], "20.00"),
    ]
    assert all("r1.s2" in a["reason"] for a in record["audit"])  # why: the policy that decided

    assert [c["charge_id"] for c in billing.get_json(f"/patients/{patient}/charges")["charges"]] == [expected_id]
    assert billing.get_json(f"/practices/{practice}/balances")["balances"] == [
        {"currency": "AUD", "outstanding": "45.00", "pending_capture": "0.00", "pending_review": "0.00", "charges": 1}
    ]


async def test_card_on_file_is_captured_through_the_gateway(
    billing: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    practice, patient, booking = unique("practice"), unique("pat"), unique("bk")
    data = no_show(booking, practice, patient, decision("no_show", fee=("6000", "JPY", "D9986"), charge_card=True))
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        await publisher.event(BOOKING_EVENTS, "booking.no_show_recorded", booking, data, source="service/booking")
        [created] = await w.wait_for(on(booking, "charge.created"))
        [captured] = await w.wait_for(on(booking, "payment.captured"))
    assert (created.data["kind"], created.data["amount"], created.data["currency"]) == ("no_show", "6000", "JPY")
    assert captured.data == {
        "charge_id": created.data["charge_id"],
        "booking_id": booking,
        "amount": "6000",
        "currency": "JPY",
    }
    assert created.offset < captured.offset  # one key, one partition: created before paid

    record = billing.get_json(f"/bookings/{booking}/billing")
    assert record["charges"][0]["status"] == "paid"
    [payment] = record["payments"]
    assert (payment["status"], payment["gateway"], payment["amount"]) == ("captured", "sandbox", "6000")
    assert [(a["action"], a["actor"]) for a in record["audit"]] == [
        ("charge_created", "service/booking"),
        ("payment_captured", "service/billing"),
    ]
    assert billing.get_json(f"/practices/{practice}/balances")["balances"] == []


async def test_a_declined_card_leaves_the_charge_outstanding(
    billing: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    practice, booking = unique("practice"), unique("bk")
    declined, broke = unique("pat") + "-decline", unique("pat") + "-nofunds"
    other = unique("bk")
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        for bk, patient in ((booking, declined), (other, broke)):
            data = cancelled(bk, practice, patient, decision("late", fee=("45.00", "USD", "D9987"), charge_card=True))
            await publisher.event(BOOKING_EVENTS, "booking.cancelled", bk, data)
        [failed] = await w.wait_for(on(booking, "payment.failed"))
        [failed_too] = await w.wait_for(on(other, "payment.failed"))
    assert (failed.data["failure_reason"], failed.data["amount"], failed.data["currency"]) == (
        "card_declined",
        "45.00",
        "USD",
    )
    assert failed_too.data["failure_reason"] == "insufficient_funds"

    [charge] = billing.get_json(f"/patients/{declined}/charges")["charges"]
    assert (charge["status"], charge["failure_reason"]) == ("outstanding", "card_declined")
    assert billing.get_json(f"/practices/{practice}/balances")["balances"] == [
        {"currency": "USD", "outstanding": "90.00", "pending_capture": "0.00", "pending_review": "0.00", "charges": 2}
    ]
    audit = billing.get_json(f"/bookings/{booking}/billing")["audit"]
    assert audit[-1]["action"] == "payment_failed" and "card_declined" in audit[-1]["reason"]


@pytest.mark.parametrize(
    ("action", "event_type"),
    [("refund", "deposit.refunded"), ("credit_note", "credit_note.issued")],
)
async def test_deposits_are_refunded_or_turned_into_credit_notes(
    billing: ServiceProcess, infra: Any, publisher: Publisher, action: str, event_type: str
) -> None:
    practice, patient, booking = unique("practice"), unique("pat"), unique("bk")
    # a professional's cancellation: no fee for the patient, and the deposit goes back
    professional = Actor.new(kind="professional", id=unique("pro"))
    data = cancelled(
        booking,
        practice,
        patient,
        decision("late", deposit_action=action),
        deposit=("30.00", "EUR"),
        actor=professional,
    )
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data)
        [outcome] = await w.wait_for(on(booking, event_type))
        await w.settle(1.0)
        assert not w.matching(on(booking, "charge.created"))
    expected = {"booking_id": booking, "amount": "30.00", "currency": "EUR"}
    if action == "credit_note":
        expected["credit_note_id"] = credit_note_id(booking, data["request_id"])
    assert outcome.data == expected
    [deposit] = billing.get_json(f"/bookings/{booking}/billing")["deposits"]
    assert deposit["credit_note_id"] == expected.get("credit_note_id")


async def test_nothing_to_bill_publishes_nothing(billing: ServiceProcess, infra: Any, publisher: Publisher) -> None:
    practice, booking, marker = unique("practice"), unique("bk"), unique("bk")
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        # a timely cancellation without fee, with a deposit the decision leaves alone
        quiet = cancelled(booking, practice, unique("pat"), decision("timely"), deposit=("20.00", "AUD"))
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, quiet)
        marked = cancelled(marker, practice, unique("pat"), decision("late", fee=("10.00", "AUD", "D9987")))
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", marker, marked)
        await w.wait_for(on(marker, "charge.created"))
        await w.settle(1.5)
        assert not w.matching(lambda s: s.key == booking)
    # billing knows nothing of the booking: as absent as another practice's
    assert billing.get_status(f"/bookings/{booking}/billing", dev_token(roles=["ops"])) == 404


async def test_a_duplicate_delivery_charges_once(billing: ServiceProcess, infra: Any, publisher: Publisher) -> None:
    practice, patient, booking = unique("practice"), unique("pat"), unique("bk")
    data = cancelled(
        booking,
        practice,
        patient,
        decision("late", fee=("45.00", "AUD", "D9987"), charge_card=True, deposit_action="keep"),
        deposit=("20.00", "AUD"),
    )
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        env = await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data)
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data, event_id=env["id"])
        # the same cancellation replayed under a new envelope id: same request, same charge id
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data)
        await w.wait_for(on(booking, "payment.captured"))
        await w.settle(2.5)
        assert len(w.matching(on(booking, "charge.created"))) == 1
        assert len(w.matching(on(booking, "deposit.kept"))) == 1
        assert len(w.matching(on(booking, "payment.captured"))) == 1
    record = billing.get_json(f"/bookings/{booking}/billing")
    assert len(record["charges"]) == 1 and len(record["payments"]) == 1 and len(record["deposits"]) == 1
    assert [a["action"] for a in record["audit"]] == ["charge_created", "deposit_kept", "payment_captured"]


async def test_contract_breaking_payloads_are_dead_lettered(
    billing: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    practice, float_fee, yen_cents, after = unique("practice"), unique("bk"), unique("bk"), unique("bk")
    broken = cancelled(float_fee, practice, unique("pat"), decision("late", fee=("45.00", "AUD", "D9987")))
    broken["decision"]["fee"]["amount"] = 45.0  # money is a decimal string, never a float
    # valid JSON, but not money: JPY has no decimals. Never rounded: refused by the contract's bounds.
    inexact = cancelled(yen_cents, practice, unique("pat"), decision("late", fee=("4500", "JPY", "D9987")))
    inexact["decision"]["fee"]["amount"] = "4500.50"
    async with EventWatcher(infra.bootstrap, [DLQ, BILLING_EVENTS]) as w:
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", float_fee, broken)
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", yen_cents, inexact)
        [letter] = await w.wait_for(lambda s: s.topic == DLQ and s.key == float_fee)
        [refused] = await w.wait_for(lambda s: s.topic == DLQ and s.key == yen_cents)
        # the consumer moved on
        fine = cancelled(after, practice, unique("pat"), decision("late", fee=("45.00", "AUD", "D9987")))
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", after, fine)
        await w.wait_for(on(after, "charge.created"))
        assert not w.matching(lambda s: s.topic == BILLING_EVENTS and s.key in (float_fee, yen_cents))
    assert "never floats" in letter.data["error"] and letter.data["service"] == "billing"
    assert json.loads(letter.data["original_value_text"])["data"]["decision"]["fee"]["amount"] == 45.0
    assert "more decimal places than JPY has" in refused.data["error"]
    assert billing.get_json(f"/practices/{practice}/balances")["balances"] == [
        {"currency": "AUD", "outstanding": "45.00", "pending_capture": "0.00", "pending_review": "0.00", "charges": 1}
    ]


def test_stripe_without_an_api_key_is_refused_at_startup_with_a_clear_message(infra: Any, log_dir: Path) -> None:
    process = ServiceProcess(
        "billing", infra.bootstrap, infra.admin_dsn, log_dir, env={"PAYMENT_GATEWAY": "stripe", "STRIPE_API_KEY": ""}
    )
    try:
        with pytest.raises(RuntimeError, match="exited"):
            process.start(timeout=30)
        assert "PAYMENT_GATEWAY=stripe needs STRIPE_API_KEY" in process.log_path.read_text()
    finally:
        process.stop()


async def test_the_read_api_answers_only_fee_roles_of_the_right_practice(
    billing: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    """The tenant comes from the token and money needs a fee role: no token is 401, a
    receptionist or therapist is 403, another practice's booking or balances are as absent as
    missing ones (404), and a patient's charges at another practice are left out."""
    practice, elsewhere, patient = unique("practice"), unique("practice"), unique("pat")
    here, later, there = unique("bk"), unique("bk"), unique("bk")
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        for booking, at in ((here, practice), (later, practice), (there, elsewhere)):
            data = cancelled(booking, at, patient, decision("late", fee=("45.00", "AUD", "D9987")))
            await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data)
        for booking in (here, later, there):
            await w.wait_for(on(booking, "charge.created"))

    biller = dev_token(practice_ids=[practice], roles=["biller"])
    their_biller = dev_token(practice_ids=[elsewhere], roles=["biller"])
    stranger = dev_token(practice_ids=[unique("practice")], roles=["biller"])
    receptionist = dev_token(practice_ids=[practice], roles=["receptionist"])
    therapist = dev_token(practice_ids=[practice], roles=["therapist"])
    expired = dev_token(practice_ids=[practice], roles=["biller"], ttl_seconds=-120)
    paths = [f"/bookings/{here}/billing", f"/practices/{practice}/balances", f"/patients/{patient}/charges"]
    for path in paths:
        assert [billing.get_status(path, t) for t in (None, expired, "not-a-token", receptionist, therapist)] == [
            401,
            401,
            401,
            403,
            403,
        ], path
        for role in ("owner", "manager", "biller", "financial"):
            assert billing.get_status(path, dev_token(practice_ids=[practice], roles=[role])) == 200, (path, role)
    assert billing.get_json(f"/bookings/{here}/billing", token=biller)["charges"][0]["practice_id"] == practice

    # another practice's, or nobody's: the same 404
    assert billing.get_status(f"/bookings/{here}/billing", stranger) == 404
    assert billing.get_status(f"/bookings/{there}/billing", biller) == 404
    assert billing.get_status(f"/bookings/{unique('bk')}/billing", biller) == 404
    assert billing.get_status(f"/practices/{practice}/balances", stranger) == 404
    assert billing.get_status(f"/patients/{patient}/charges?practice_id={practice}", stranger) == 404

    # one patient, two practices: each practice's biller sees its own charges; ops sees all
    def bookings_of(token: str | None, query: str = "") -> list[str]:
        return [c["booking_id"] for c in billing.get_json(f"/patients/{patient}/charges{query}", token)["charges"]]

    assert sorted(bookings_of(biller)) == sorted([here, later])
    assert bookings_of(their_biller) == [there]
    assert bookings_of(stranger) == []
    assert sorted(bookings_of(None)) == sorted([here, later, there])
    assert bookings_of(None, f"?practice_id={elsewhere}") == [there]
    first, second = bookings_of(biller, "?page_size=1"), bookings_of(biller, "?page_size=1&page=2")
    assert sorted(first + second) == sorted([here, later]) and bookings_of(biller, "?page_size=1&page=3") == []
    page = billing.get_json(f"/patients/{patient}/charges?page=2&page_size=1", biller)
    assert (page["patient_id"], page["page"], page["page_size"]) == (patient, 2, 1)
    assert billing.get_json(f"/practices/{practice}/balances", biller)["balances"] == [
        {"currency": "AUD", "outstanding": "90.00", "pending_capture": "0.00", "pending_review": "0.00", "charges": 2}
    ]

    # parameters out of bounds
    for path in (
        "/bookings/not%20an%20id/billing",
        f"/bookings/{'b' * 300}/billing",
        "/practices/not%20an%20id/balances",
        f"/patients/{patient}/charges?page=0",
        f"/patients/{patient}/charges?page_size=100000",
        f"/patients/{patient}/charges?practice_id=not%20an%20id",
    ):
        assert billing.get_status(path, biller) == 422, path


async def test_a_no_show_keeps_the_deposit_and_raises_the_no_show_fee(
    billing: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    practice, patient, booking = unique("practice"), unique("pat"), unique("bk")
    data = no_show(
        booking,
        practice,
        patient,
        decision("no_show", fee=("80.00", "AUD", "D9986"), deposit_action="keep"),
        deposit=("25.00", "AUD"),
    )
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        await publisher.event(BOOKING_EVENTS, "booking.no_show_recorded", booking, data, source="service/booking")
        [created] = await w.wait_for(on(booking, "charge.created"))
        [kept] = await w.wait_for(on(booking, "deposit.kept"))
    assert (created.data["kind"], created.data["amount"], created.data["code"]) == ("no_show", "80.00", "D9986")
    assert kept.data == {"booking_id": booking, "amount": "25.00", "currency": "AUD"}
    record = billing.get_json(f"/bookings/{booking}/billing")
    assert [(c["kind"], c["status"], c["amount"], c["code"]) for c in record["charges"]] == [
        ("no_show", "outstanding", "80.00", "D9986")
    ]
    assert [(d["outcome"], d["amount"], d["currency"]) for d in record["deposits"]] == [("kept", "25.00", "AUD")]
    assert [(a["action"], a["actor"]) for a in record["audit"]] == [
        ("charge_created", "service/booking"),
        ("deposit_kept", "service/booking"),
    ]


async def test_a_timely_cancellation_refunds_the_deposit_and_charges_nothing(
    billing: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    practice, patient, booking = unique("practice"), unique("pat"), unique("bk")
    patient_actor = Actor.new(kind="patient", id=patient)
    data = cancelled(
        booking,
        practice,
        patient,
        decision("timely", deposit_action="refund"),
        deposit=("20.00", "AUD"),
        actor=patient_actor,
    )
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data, source="service/booking")
        [refunded] = await w.wait_for(on(booking, "deposit.refunded"))
        await w.settle(1.0)
        assert not w.matching(on(booking, "charge.created"))
    assert refunded.data == {"booking_id": booking, "amount": "20.00", "currency": "AUD"}
    record = billing.get_json(f"/bookings/{booking}/billing")
    assert record["charges"] == [] and record["payments"] == []
    assert [(d["outcome"], d["amount"]) for d in record["deposits"]] == [("refunded", "20.00")]
    assert [(a["action"], a["actor"]) for a in record["audit"]] == [("deposit_refunded", f"patient:{patient}")]
    assert billing.get_json(f"/practices/{practice}/balances")["balances"] == []


# --- adjustments (billing.commands.v1) --------------------------------------------------------


def adjustment(charge: str, roles: list[str], **changes: str) -> dict[str, Any]:
    return {
        "request_id": unique("adj"),
        "charge_id": charge,
        "actor": {"id": unique("staff"), "roles": roles},
        **changes,
    }


def answer_to(command: dict[str, Any]):
    return lambda s: (
        s.topic == BILLING_EVENTS
        and s.type in ("charge.adjusted", "charge.adjustment_rejected")
        and s.data.get("request_id") == command["request_id"]
    )


async def _raise_charges(
    w: EventWatcher, publisher: Publisher, practice: str, n: int, *, charge_card: bool = False
) -> list[tuple[str, str]]:
    """n late-cancellation charges of 45.00 AUD (D9987): [(booking_id, charge_id)]."""
    bookings = []
    for _ in range(n):
        booking = unique("bk")
        data = cancelled(
            booking, practice, unique("pat"), decision("late", fee=("45.00", "AUD", "D9987"), charge_card=charge_card)
        )
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data, source="service/booking")
        bookings.append((booking, charge_id(booking, data["request_id"])))
    for booking, _ in bookings:
        await w.wait_for(on(booking, "charge.created"))
    return bookings


@pytest.mark.parametrize(
    ("roles", "allowed"),
    [
        (["owner"], True),
        (["manager"], True),
        (["biller"], True),
        (["therapist", "financial"], True),
        (["therapist"], False),
        (["reception"], False),
    ],
)
async def test_only_owner_manager_biller_or_financial_therapist_may_adjust(
    billing: ServiceProcess, infra: Any, publisher: Publisher, roles: list[str], allowed: bool
) -> None:
    practice = unique("practice")
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        [(booking, charge)] = await _raise_charges(w, publisher, practice, 1)
        command = adjustment(charge, roles, amount="30.00", code="D9986", code_system="CDT")
        sent = await publisher.event(
            BILLING_COMMANDS, "charge.adjustment_requested", charge, command, source="upstream/staff-tools"
        )
        [answer] = await w.wait_for(answer_to(command))
    assert answer.key == booking  # billing events are keyed by the booking
    record = billing.get_json(f"/bookings/{booking}/billing")
    [row] = record["charges"]
    [request] = record["adjustments"]
    who = f"staff:{command['actor']['id']}"
    if allowed:
        assert answer.type == "charge.adjusted"
        assert answer.data == {
            "charge_id": charge,
            "request_id": command["request_id"],
            "before": {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"},
            "after": {"amount": "30.00", "currency": "AUD", "code": "D9986", "code_system": "CDT"},
        }
        assert (row["amount"], row["code"], row["status"]) == ("30.00", "D9986", "outstanding")
        assert billing.get_json(f"/practices/{practice}/balances")["balances"] == [
            {
                "currency": "AUD",
                "outstanding": "30.00",
                "pending_capture": "0.00",
                "pending_review": "0.00",
                "charges": 1,
            }
        ]
        audit = record["audit"][-1]
        assert (audit["action"], audit["actor"], audit["amount"], audit["charge_id"]) == (
            "charge_adjusted",
            who,
            "30.00",
            charge,
        )
        assert audit["detail"]["before"]["amount_minor"] == 4500 and audit["detail"]["after"]["amount_minor"] == 3000
        assert datetime.fromisoformat(audit["at"]) == datetime.fromisoformat(sent["time"].replace("Z", "+00:00"))
        assert (request["outcome"], request["actor"], request["before"]["amount"], request["after"]["amount"]) == (
            "adjusted",
            who,
            "45.00",
            "30.00",
        )
    else:
        assert answer.type == "charge.adjustment_rejected"
        assert answer.data == {"charge_id": charge, "request_id": command["request_id"], "reason": "forbidden"}
        assert (row["amount"], row["code"]) == ("45.00", "D9987")  # untouched
        assert (record["audit"][-1]["action"], record["audit"][-1]["actor"]) == ("adjustment_rejected", who)
        assert (request["outcome"], request["reason"], request["actor_roles"]) == ("rejected", "forbidden", roles)


async def test_an_adjustment_of_a_charge_that_was_never_raised_is_not_found(
    billing: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    missing, not_a_charge_id = str(uuid.uuid4()), unique("charge")
    commands = [adjustment(c, ["owner"], amount="10.00") for c in (missing, not_a_charge_id)]
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        for command in commands:
            await publisher.event(BILLING_COMMANDS, "charge.adjustment_requested", command["charge_id"], command)
        answers = [(await w.wait_for(answer_to(c)))[0] for c in commands]
    for command, answer in zip(commands, answers, strict=True):
        assert answer.type == "charge.adjustment_rejected"
        assert answer.data == {
            "charge_id": command["charge_id"],
            "request_id": command["request_id"],
            "reason": "not_found",
        }
        assert answer.key == command["charge_id"]  # no booking to key it by


async def test_a_paid_charge_lowered_refunds_the_difference_once_and_its_code_can_be_corrected(
    billing: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    practice = unique("practice")
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        [(booking, charge)] = await _raise_charges(w, publisher, practice, 1, charge_card=True)
        await w.wait_for(on(booking, "payment.captured"))
        lower = adjustment(charge, ["manager"], amount="20.00")
        recode = adjustment(charge, ["manager"], code="D9986")
        nothing = adjustment(charge, ["manager"], code="D9986")  # after the recode: changes nothing
        for command in (lower, recode, nothing):
            await publisher.event(BILLING_COMMANDS, "charge.adjustment_requested", charge, command)
            await w.wait_for(answer_to(command))
        # the lowering again, under a new envelope id: answered and refunded once
        await publisher.event(BILLING_COMMANDS, "charge.adjustment_requested", charge, lower)
        [refunded] = await w.wait_for(on(booking, "payment.refunded"))
        await w.settle(1.5)
        assert len(w.matching(on(booking, "payment.refunded"))) == 1
        [lowered] = w.matching(answer_to(lower))
        [recoded] = w.matching(answer_to(recode))
        [unchanged] = w.matching(answer_to(nothing))
    assert (lowered.type, lowered.data["after"]["amount"]) == ("charge.adjusted", "20.00")
    assert refunded.data == {
        "charge_id": charge,
        "booking_id": booking,
        "refund_id": movement_id(charge, lower["request_id"], "refund"),
        "amount": "25.00",
        "currency": "AUD",
        "reason": "adjustment",
    }
    assert recoded.type == "charge.adjusted"
    assert (recoded.data["before"]["code"], recoded.data["after"]["code"]) == ("D9987", "D9986")
    assert (unchanged.type, unchanged.data["reason"]) == ("charge.adjustment_rejected", "invalid_request")
    record = billing.get_json(f"/bookings/{booking}/billing")
    [row] = record["charges"]
    assert (row["status"], row["amount"], row["paid"], row["code"]) == ("paid", "20.00", "20.00", "D9986")
    [movement] = record["movements"]
    assert (movement["kind"], movement["status"], movement["amount"], movement["actor"]) == (
        "refund",
        "succeeded",
        "25.00",
        "staff:" + lower["actor"]["id"],
    )
    actions = [a["action"] for a in record["audit"]]
    assert actions.count("refund_requested") == 1 and actions.count("refund_succeeded") == 1


async def test_an_adjustment_delivered_twice_or_replayed_is_answered_once(
    billing: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    practice = unique("practice")
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        [(booking, charge)] = await _raise_charges(w, publisher, practice, 1)
        command = adjustment(charge, ["biller"], amount="40.00")
        sent = await publisher.event(BILLING_COMMANDS, "charge.adjustment_requested", charge, command)
        await publisher.event(BILLING_COMMANDS, "charge.adjustment_requested", charge, command, event_id=sent["id"])
        await publisher.event(BILLING_COMMANDS, "charge.adjustment_requested", charge, command)  # new envelope id
        # then a second, different request: amounts are absolute, so 40.00 -> 35.00
        second = adjustment(charge, ["owner"], amount="35.00")
        await publisher.event(BILLING_COMMANDS, "charge.adjustment_requested", charge, second)
        await w.wait_for(answer_to(second))
        await w.settle(1.5)
        [answer] = w.matching(answer_to(command))
        [answer_two] = w.matching(answer_to(second))
    assert (answer.data["before"]["amount"], answer.data["after"]["amount"]) == ("45.00", "40.00")
    assert (answer_two.data["before"]["amount"], answer_two.data["after"]["amount"]) == ("40.00", "35.00")
    assert answer.offset < answer_two.offset
    record = billing.get_json(f"/bookings/{booking}/billing")
    assert [a["action"] for a in record["audit"]] == ["charge_created", "charge_adjusted", "charge_adjusted"]
    assert [r["request_id"] for r in record["adjustments"]] == [command["request_id"], second["request_id"]]
    assert record["charges"][0]["amount"] == "35.00"


async def test_an_out_of_bounds_adjustment_is_rejected_as_invalid_request(
    billing: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    """Outside the contract's bounds (an exponent of a million, zero, 21 roles): dead-lettered and
    answered invalid_request, keyed by the charge. Within them but more than the charge's currency
    may be: answered by the handler, keyed by the booking. The charge stays as it was."""
    practice = unique("practice")
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS, DLQ]) as w:
        [(booking, charge)] = await _raise_charges(w, publisher, practice, 1)
        unreadable = [
            adjustment(charge, ["owner"], amount="1E+1000000"),
            adjustment(charge, ["owner"], amount="0"),
            adjustment(charge, ["owner"] * 21, amount="30.00"),
        ]
        too_much = adjustment(charge, ["owner"], amount="100000.01")  # AUD: at most 100000.00
        for command in [*unreadable, too_much]:
            await publisher.event(BILLING_COMMANDS, "charge.adjustment_requested", charge, command)
        answers = [(await w.wait_for(answer_to(c)))[0] for c in [*unreadable, too_much]]
        letters = await w.wait_for(lambda s: s.topic == DLQ and s.key == charge, count=len(unreadable))
    for command, answer in zip([*unreadable, too_much], answers, strict=True):
        assert answer.type == "charge.adjustment_rejected"
        assert answer.data == {"charge_id": charge, "request_id": command["request_id"], "reason": "invalid_request"}
    assert [a.key for a in answers] == [charge, charge, charge, booking]
    assert len(letters) == len(unreadable) and "1E+1000000" not in letters[0].data["error"]
    [row] = billing.get_json(f"/bookings/{booking}/billing")["charges"]
    assert (row["amount"], row["status"]) == ("45.00", "outstanding")


# --- the capture task's crash window, in-process against a throwaway copy of the schema -------


class LosesAnswers:
    """A network between us and the real sandbox that loses the first `n` answers: the card
    is charged, but we never hear so (what a crash after the call looks like to the retry)."""

    name = "sandbox"
    charges_saved_cards = False
    key_lifetime = None

    def __init__(self, processor: SandboxGateway, n: int) -> None:
        self.processor, self.to_lose, self.calls = processor, n, 0

    async def charge(self, **kwargs: Any) -> PaymentResult:
        self.calls += 1
        result = await self.processor.charge(**kwargs)
        if self.to_lose > 0:
            self.to_lose -= 1
            raise GatewayUnavailable("connection reset after the request was sent")
        return result


@pytest.fixture
async def scratch_pool(infra: Any) -> AsyncIterator[asyncpg.Pool]:
    """The billing migrations in a schema of its own, so no running billing process (this
    module's, or anyone's) captures the test's charges."""
    async with ScratchSchemas(infra.admin_dsn, "billing_capture", MIGRATIONS, max_size=10) as scratch:
        yield await scratch.new()


async def _pending_charge(pool: asyncpg.Pool) -> str:
    booking, request = unique("bk"), unique("req")
    async with pool.acquire() as conn:
        await repository.insert_charges(
            conn,
            [
                {
                    "charge_id": charge_id(booking, request),
                    "booking_id": booking,
                    "request_id": request,
                    "practice_id": unique("practice"),
                    "patient_id": unique("pat"),
                    "kind": "no_show",
                    "amount_minor": 6000,
                    "currency": "AUD",
                    "code": "D9986",
                    "code_system": "CDT",
                    "charge_card": True,
                    "status": "pending_capture",
                    "policy_version": "r1.s2",
                    "occurred_at": START,
                    "correlation_id": None,
                },
            ],
        )
    return charge_id(booking, request)


async def _capture(pool: asyncpg.Pool, gateway: Any, woken: list[bool], lease: float) -> int:
    """One round of the capture job (shared.background) with `gateway`; how many charges it leased."""
    settings = BillingSettings(capture_batch_size=10, capture_lease_seconds=lease, gateway_timeout_seconds=5.0)
    done = await background.run_round(
        capture.card_capture(settings, saved_cards=gateway.charges_saved_cards),
        pool=pool,
        service="billing",
        deps=SimpleNamespace(gateway=gateway),
        on_committed=lambda: woken.append(True),
    )
    return done.claimed


async def test_a_lost_gateway_answer_is_asked_again_with_the_same_key_and_charged_once(
    scratch_pool: asyncpg.Pool,
) -> None:
    the_charge = await _pending_charge(scratch_pool)
    processor = SandboxGateway()
    network = LosesAnswers(processor, n=1)
    woken: list[bool] = []

    assert await _capture(scratch_pool, network, woken, lease=0.0) == 1
    # the card was charged, the answer lost: nothing recorded, nothing published, still pending
    assert len(processor.captures) == 1
    status = await scratch_pool.fetchval("SELECT status FROM charges WHERE charge_id = $1", the_charge)
    assert status == "pending_capture" and woken == []
    assert await scratch_pool.fetchval("SELECT count(*) FROM outbox") == 0

    assert await _capture(scratch_pool, network, woken, lease=0.0) == 1  # the lease is over: again
    assert network.calls == 2 and len(processor.captures) == 1  # same key: charged once
    row = await scratch_pool.fetchrow(
        "SELECT c.status, p.status AS payment, p.gateway_ref, p.idempotency_key, c.capture_attempts"
        " FROM charges c JOIN payments p USING (charge_id) WHERE c.charge_id = $1",
        the_charge,
    )
    assert dict(row) == {
        "status": "paid",
        "payment": "captured",
        "gateway_ref": processor.captures[0].reference,
        "idempotency_key": the_charge,
        "capture_attempts": 2,
    }
    [event] = await scratch_pool.fetch("SELECT type, key, payload::text AS payload FROM outbox")
    assert event["type"] == "payment.captured"
    assert json.loads(event["payload"])["data"]["amount"] == "60.00"
    assert woken == [True]

    assert await _capture(scratch_pool, network, woken, lease=0.0) == 0  # nothing left to capture


async def test_two_replicas_never_call_for_the_same_charge_at_once(scratch_pool: asyncpg.Pool) -> None:
    charges = {await _pending_charge(scratch_pool) for _ in range(3)}
    processor = SandboxGateway()
    counting = LosesAnswers(processor, n=0)
    woken: list[bool] = []
    claimed = await asyncio.gather(*(_capture(scratch_pool, counting, woken, lease=60.0) for _ in range(4)))
    assert sum(claimed) == 3 and counting.calls == 3  # each charge leased to one attempt
    paid = await scratch_pool.fetch("SELECT charge_id::text AS charge_id FROM payments WHERE status = 'captured'")
    assert {r["charge_id"] for r in paid} == charges


# --- sets against the real schema: the set-based handlers' and the capture record's SQL -----------


def _units(conn: Any, payloads: list[dict[str, Any]], event_ids: list[str]) -> tuple[list[Unit[Any]], list[Any]]:
    """The units the consumer would hand billing for `payloads` on booking.events.v1, on `conn`."""
    deps = BillingDeps(gateway=SandboxGateway(), repository=repository)
    units: list[Unit[Any]] = []
    for data, event_id in zip(payloads, event_ids, strict=True):
        payload = BookingCancelled.model_validate(data)
        wire = new_envelope(
            payload, source="service/booking", subject=payload.booking_id, correlation_id=None, event_id=event_id
        )
        event = parse_envelope(json.dumps(wire).encode(), models_for(BOOKING_EVENTS))
        units.append(Unit(conn=conn, service="billing", deps=deps, correlation_id=event.correlation_id, event=event))
    return units, [u.event.payload for u in units]


async def test_a_set_of_cancellations_writes_each_kind_once_and_a_replayed_set_writes_nothing(
    scratch_pool: asyncpg.Pool,
) -> None:
    practice, patient = unique("practice"), unique("pat")
    bookings = [unique("bk") for _ in range(5)]
    with_pay = cancelled(bookings[4], practice, patient, decision("late", fee=("45.00", "AUD", "D9987")))
    with_pay["decision"]["turnaway_pay"] = {"amount": "90.00", "currency": "AUD"}
    with_pay["professional_id"] = unique("pro")
    payloads = [
        cancelled(bookings[0], practice, patient, decision("late", fee=("45.00", "AUD", "D9987"))),
        cancelled(bookings[1], practice, patient, decision("late", fee=("30.00", "AUD", "D9987"), charge_card=True)),
        cancelled(bookings[2], practice, patient, decision("timely")),
        cancelled(
            bookings[3],
            practice,
            patient,
            decision("timely", deposit_action="credit_note"),
            deposit=("20.00", "AUD"),
        ),
        with_pay,
        with_pay,  # the same request again in the set, under another envelope id: the first one bills it
    ]
    ids = [str(uuid.uuid4()) for _ in payloads]
    async with scratch_pool.acquire() as conn, conn.transaction():
        units, events = _units(conn, payloads, ids)
        await turnaway.on_cancelled.handle_many(units, events)
    assert [[e.envelope["type"] for e in u.emitted] for u in units] == [
        ["charge.created"],
        ["charge.created"],
        [],
        ["credit_note.issued"],
        ["charge.created", "turnaway_pay.owed"],
        [],
    ]
    charges = await scratch_pool.fetch(
        "SELECT booking_id, status, amount_minor, next_capture_at IS NOT NULL AS due FROM charges ORDER BY amount_minor"
    )
    assert [tuple(r) for r in charges] == [
        (bookings[1], "pending_capture", 3000, True),
        (bookings[0], "outstanding", 4500, False),
        (bookings[4], "outstanding", 4500, False),
    ]
    deposit = await scratch_pool.fetchrow(
        "SELECT booking_id, outcome, credit_note_id::text AS note FROM deposit_outcomes"
    )
    assert tuple(deposit) == (bookings[3], "credit_note", credit_note_id(bookings[3], payloads[3]["request_id"]))
    owed = await scratch_pool.fetchrow("SELECT booking_id, amount_minor, event_id FROM turnaway_pay")
    assert tuple(owed) == (bookings[4], 9000, ids[4])
    audit = await scratch_pool.fetch(
        "SELECT booking_id, action, detail->>'event_id' AS event_id FROM billing_audit ORDER BY seq"
    )
    assert [tuple(r) for r in audit] == [
        (bookings[0], "charge_created", ids[0]),
        (bookings[1], "charge_created", ids[1]),
        (bookings[3], "credit_note_issued", ids[3]),
        (bookings[4], "charge_created", ids[4]),
        (bookings[4], "turnaway_pay_owed", None),
    ]

    # The same requests again under new envelope ids, one of them twice in the set: nothing moves.
    again = [*payloads, payloads[0]]
    async with scratch_pool.acquire() as conn, conn.transaction():
        units, events = _units(conn, again, [str(uuid.uuid4()) for _ in again])
        await turnaway.on_cancelled.handle_many(units, events)
    assert [u.emitted for u in units] == [[]] * len(again)
    assert await scratch_pool.fetchval("SELECT count(*) FROM billing_audit") == len(audit)
    assert await scratch_pool.fetchval("SELECT count(*) FROM charges") == 3


async def test_a_payment_is_recorded_once_in_one_statement_even_beside_others_in_one_transaction(
    scratch_pool: asyncpg.Pool,
) -> None:
    first, second, topping_up = [await _pending_charge(scratch_pool) for _ in range(3)]
    # A top-up in flight (refunds.py) has something paid of it: a capture's answer is not its own.
    await scratch_pool.execute("UPDATE charges SET paid_minor = 100 WHERE charge_id = $1", topping_up)
    gateway = SandboxGateway()
    async with scratch_pool.acquire() as conn, conn.transaction():
        rows = {r["charge_id"]: r for r in await conn.fetch(f"SELECT {repository.CHARGE_COLUMNS} FROM charges")}
        unit = background.WorkUnit(
            conn=conn, service="billing", deps=SimpleNamespace(gateway=gateway), now=datetime.now(UTC)
        )
        captured = PaymentResult("captured", "ref-1", 6000, "AUD")
        declined = PaymentResult("failed", "ref-2", 6000, "AUD", failure_reason="card_declined")
        recorded = [
            await capture.record_payment(unit, capture.DueCharge(rows[first], None), captured),
            await capture.record_payment(unit, capture.DueCharge(rows[second], None), declined),
            await capture.record_payment(unit, capture.DueCharge(rows[first], None), declined),  # again: nothing
            await capture.record_payment(unit, capture.DueCharge(rows[topping_up], None), captured),
        ]
    assert recorded == [True, True, False, False]
    assert [e.envelope["type"] for e in unit.emitted] == ["payment.captured", "payment.failed"]
    state = await scratch_pool.fetch(
        "SELECT c.charge_id::text AS charge_id, c.status, c.paid_minor, c.failure_reason, c.next_capture_at,"
        " p.status AS payment, p.gateway_ref, (SELECT array_agg(a.action ORDER BY a.seq) FROM billing_audit a"
        " WHERE a.charge_id = c.charge_id) AS audit"
        " FROM charges c LEFT JOIN payments p USING (charge_id)"
    )
    by_id = {r["charge_id"]: tuple(r)[1:] for r in state}
    assert by_id[first] == ("paid", 6000, None, None, "captured", "ref-1", ["payment_captured"])
    assert by_id[second] == ("outstanding", 0, "card_declined", None, "failed", "ref-2", ["payment_failed"])
    assert by_id[topping_up][:2] == ("pending_capture", 100) and by_id[topping_up][4:] == (None, None, None)

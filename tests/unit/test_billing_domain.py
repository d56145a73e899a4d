"""Table tests of billing's pure rules (RULES.md "Fees and deposits"): exact minor units, the
charge and deposit each decision makes, deterministic ids, and the sandbox gateway's
idempotency. No I/O."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from billing.app import definition
from billing.domain import (
    ChargePlan,
    DepositPlan,
    InvalidAmount,
    charge_id,
    credit_note_id,
    exponent,
    from_minor,
    payment_id,
    plan_charge,
    plan_deposit,
    status_after_payment,
    to_minor,
)
from billing.gateway import ConfigurationError, IdempotencyKeyReused, SandboxGateway, make_gateway
from billing.settings import BillingSettings
from shared.contracts.base import Money
from shared.contracts.common import Decision, Fee


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("45.00", "AUD", 4500),
        ("45", "AUD", 4500),
        ("45.5", "USD", 4550),
        ("0.01", "EUR", 1),
        ("0", "AUD", 0),
        ("3000", "JPY", 3000),
        ("3000.00", "JPY", 3000),  # trailing zeros are exact
        ("5000", "KRW", 5000),
        ("1.234", "KWD", 1234),
        ("12345678901.99", "USD", 1234567890199),  # large amounts stay exact
        ("1E+3", "JPY", 1000),
    ],
)
def test_to_minor_and_back_is_exact(amount: str, currency: str, minor: int) -> None:
    assert to_minor(Decimal(amount), currency) == minor
    back = from_minor(minor, currency)
    assert back == Decimal(amount)
    assert -back.as_tuple().exponent == exponent(currency)  # always the currency's decimals


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [(4500, "AUD", "45.00"), (1, "USD", "0.01"), (3000, "JPY", "3000"), (1234, "KWD", "1.234"), (0, "EUR", "0.00")],
)
def test_from_minor_prints_the_currencys_decimals(minor: int, currency: str, text: str) -> None:
    assert format(from_minor(minor, currency), "f") == text


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        ("45.001", "AUD"),  # more decimals than the currency has: never rounded
        ("100.5", "JPY"),
        ("1.2345", "KWD"),
        ("-1.00", "AUD"),
        ("NaN", "AUD"),
        ("Infinity", "USD"),
    ],
)
def test_to_minor_refuses_inexact_or_negative_amounts(amount: str, currency: str) -> None:
    with pytest.raises(InvalidAmount):
        to_minor(Decimal(amount), currency)


def test_to_minor_refuses_floats() -> None:
    with pytest.raises(InvalidAmount):
        to_minor(45.0, "AUD")  # type: ignore[arg-type]


def decision(
    classification: str = "late",
    *,
    fee: tuple[str, str] | None = ("45.00", "AUD"),
    charge_card: bool = False,
    deposit_action: str = "none",
) -> Decision:
    return Decision.new(
        allowed=True,
        classification=classification,
        fee=Fee.new(amount=Decimal(fee[0]), currency=fee[1], code="D9987", code_system="CDT") if fee else None,
        charge_card=charge_card,
        deposit_action=deposit_action,
        policy_version="r1.s1",
    )


CHARGE = charge_id("b-1", "r-1")


@pytest.mark.parametrize(
    ("request_kind", "the_decision", "expected"),
    [
        (
            "cancellation",
            decision("late"),
            ChargePlan(CHARGE, "late_cancellation", 4500, "AUD", "D9987", "CDT", "outstanding"),
        ),
        (
            "cancellation",
            decision("late", charge_card=True),
            ChargePlan(CHARGE, "late_cancellation", 4500, "AUD", "D9987", "CDT", "pending_capture"),
        ),
        # staff `charge` on a timely cancellation: the fee decided is the fee charged
        (
            "cancellation",
            decision("timely"),
            ChargePlan(CHARGE, "late_cancellation", 4500, "AUD", "D9987", "CDT", "outstanding"),
        ),
        (
            "no_show",
            decision("no_show", fee=("6000", "JPY"), charge_card=True),
            ChargePlan(CHARGE, "no_show", 6000, "JPY", "D9987", "CDT", "pending_capture"),
        ),
        ("cancellation", decision("timely", fee=None), None),  # no fee, no charge
        ("no_show", decision("no_show", fee=None, charge_card=False), None),  # waived
        ("cancellation", decision("late", fee=("0.00", "AUD")), None),  # a fee of nothing
    ],
)
def test_plan_charge(request_kind: str, the_decision: Decision, expected: ChargePlan | None) -> None:
    assert plan_charge(request_kind, "b-1", "r-1", the_decision) == expected  # type: ignore[arg-type]


def test_a_fee_with_too_many_decimals_is_refused_not_rounded() -> None:
    with pytest.raises(InvalidAmount):
        plan_charge("cancellation", "b-1", "r-1", decision(fee=("10.5", "JPY")))


def test_charge_amount_keeps_the_currencys_decimals() -> None:
    plan = plan_charge("cancellation", "b-1", "r-1", decision(fee=("45", "AUD")))
    assert plan is not None and format(plan.amount, "f") == "45.00"


DEPOSIT = Money.new(amount=Decimal("20.00"), currency="AUD")


@pytest.mark.parametrize(
    ("action", "deposit", "expected"),
    [
        ("refund", DEPOSIT, DepositPlan("refunded", 2000, "AUD")),
        ("keep", DEPOSIT, DepositPlan("kept", 2000, "AUD")),
        ("credit_note", DEPOSIT, DepositPlan("credit_note", 2000, "AUD", credit_note_id("b-1", "r-1"))),
        (
            "credit_note",
            Money.new(amount=Decimal("5000"), currency="JPY"),
            DepositPlan("credit_note", 5000, "JPY", credit_note_id("b-1", "r-1")),
        ),
        ("none", DEPOSIT, None),
        ("refund", None, None),  # nothing paid ahead, nothing to refund
        ("keep", None, None),
    ],
)
def test_plan_deposit(action: str, deposit: Money | None, expected: DepositPlan | None) -> None:
    assert plan_deposit("b-1", "r-1", decision(deposit_action=action), deposit) == expected


def test_deposit_and_fee_are_independent() -> None:
    the_decision = decision("late", fee=None, deposit_action="keep")
    assert plan_charge("cancellation", "b-1", "r-1", the_decision) is None
    assert plan_deposit("b-1", "r-1", the_decision, DEPOSIT) == DepositPlan("kept", 2000, "AUD")


def test_ids_are_derived_from_booking_and_request() -> None:
    assert charge_id("b-1", "r-1") == charge_id("b-1", "r-1")
    assert len({charge_id("b-1", "r-1"), charge_id("b-1", "r-2"), charge_id("b-2", "r-1")}) == 3
    assert credit_note_id("b-1", "r-1") not in {charge_id("b-1", "r-1")}
    assert payment_id(CHARGE) == payment_id(CHARGE) != payment_id(charge_id("b-2", "r-1"))


@pytest.mark.parametrize(("captured", "status"), [(True, "paid"), (False, "outstanding")])
def test_a_failed_payment_leaves_the_charge_outstanding(captured: bool, status: str) -> None:
    assert status_after_payment(captured) == status


# --- the sandbox gateway (async tests: pytest-asyncio auto mode) -----------------------------


@pytest.mark.parametrize(
    ("customer_ref", "status", "reason"),
    [
        ("pat-123", "captured", None),
        ("pat-123-decline", "failed", "card_declined"),
        ("pat-123-nofunds", "failed", "insufficient_funds"),
        ("pat-123-expired", "failed", "expired_card"),
        ("pat-decline-123", "captured", None),  # only the suffix decides
    ],
)
async def test_sandbox_decides_by_customer_suffix(customer_ref: str, status: str, reason: str | None) -> None:
    sandbox = SandboxGateway()
    result = await sandbox.charge(idempotency_key="k-1", amount_minor=4500, currency="AUD", customer_ref=customer_ref)
    assert (result.status, result.failure_reason, result.amount_minor, result.currency) == (status, reason, 4500, "AUD")
    assert len(sandbox.captures) == (1 if status == "captured" else 0)


async def test_sandbox_test_cards_are_configurable() -> None:
    sandbox = SandboxGateway({"-stolen": "stolen_card"})
    stolen = await sandbox.charge(idempotency_key="k-1", amount_minor=100, currency="USD", customer_ref="p-stolen")
    fine = await sandbox.charge(idempotency_key="k-2", amount_minor=100, currency="USD", customer_ref="p-decline")
    assert (stolen.status, stolen.failure_reason) == ("failed", "stolen_card")
    assert fine.captured


async def test_sandbox_same_key_returns_the_first_result_and_charges_once() -> None:
    sandbox = SandboxGateway()
    first = await sandbox.charge(idempotency_key="charge-1", amount_minor=4500, currency="AUD", customer_ref="pat-1")
    again = await sandbox.charge(idempotency_key="charge-1", amount_minor=4500, currency="AUD", customer_ref="pat-1")
    other = await sandbox.charge(idempotency_key="charge-2", amount_minor=4500, currency="AUD", customer_ref="pat-1")
    assert first == again and first.captured
    assert other.reference != first.reference
    assert len(sandbox.captures) == 2  # one per key, not per call


async def test_sandbox_concurrent_calls_with_one_key_charge_once() -> None:
    sandbox = SandboxGateway()
    results = await asyncio.gather(
        *(sandbox.charge(idempotency_key="c", amount_minor=4500, currency="AUD", customer_ref="p") for _ in range(5))
    )
    assert len(set(results)) == 1 and len(sandbox.captures) == 1


async def test_sandbox_same_key_after_a_decline_is_still_declined() -> None:
    sandbox = SandboxGateway()
    a = await sandbox.charge(idempotency_key="c", amount_minor=500, currency="AUD", customer_ref="p-nofunds")
    b = await sandbox.charge(idempotency_key="c", amount_minor=500, currency="AUD", customer_ref="p-nofunds")
    assert a == b and a.failure_reason == "insufficient_funds" and sandbox.captures == []


async def test_sandbox_refuses_a_key_reused_with_other_parameters() -> None:
    sandbox = SandboxGateway()
    await sandbox.charge(idempotency_key="c", amount_minor=500, currency="AUD", customer_ref="p")
    with pytest.raises(IdempotencyKeyReused):
        await sandbox.charge(idempotency_key="c", amount_minor=600, currency="AUD", customer_ref="p")
    assert len(sandbox.captures) == 1


async def test_sandbox_refuses_nothing_to_charge() -> None:
    result = await SandboxGateway().charge(idempotency_key="c", amount_minor=0, currency="AUD", customer_ref="p")
    assert (result.status, result.failure_reason) == ("failed", "invalid_amount")


@pytest.mark.parametrize("choice", ["stripe", "paypal"])
def test_an_unavailable_gateway_is_a_configuration_error(choice: str) -> None:
    with pytest.raises(ConfigurationError, match="PAYMENT_GATEWAY"):
        make_gateway(choice)
    with pytest.raises(ConfigurationError, match="PAYMENT_GATEWAY"):
        definition(BillingSettings(payment_gateway=choice))


def test_sandbox_is_the_default_gateway() -> None:
    assert BillingSettings().payment_gateway == "sandbox"
    assert isinstance(make_gateway("sandbox"), SandboxGateway)

"""Table tests of billing's pure rules (docs/rules.md#fees-and-deposits): exact minor units, the
charge and deposit each decision makes, deterministic ids, who may adjust a charge and what an
adjustment may change, the sandbox gateway's idempotency and the gateway configuration. No I/O."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from billing.app import definition
from billing.domain import (
    AdjustmentDecision,
    ChargePlan,
    ChargeTerms,
    DepositPlan,
    FeeChange,
    InvalidAmount,
    ReviewAnswer,
    charge_id,
    credit_note_id,
    decide_adjustment,
    decide_review,
    exponent,
    from_minor,
    may_adjust,
    movement_id,
    payment_id,
    plan_charge,
    plan_deposit,
    plan_fee_change,
    status_after_payment,
    to_minor,
)
from billing.gateway import ConfigurationError, IdempotencyKeyReused, SandboxGateway, StripeGateway, make_gateway
from billing.settings import BillingSettings
from shared.contracts.base import CURRENCIES, Money, decimal_places
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
        # Babel's decimal places, the contract's: billing keeps no table of its own
        ("3000", "HUF", 3000),
        ("250000", "IDR", 250000),
        ("1500", "IQD", 1500),
        ("1.2345", "CLF", 12345),
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
        ("12.50", "HUF"),  # HUF has no decimals (Babel), so neither has billing
        ("-1.00", "AUD"),
        ("NaN", "AUD"),
        ("Infinity", "USD"),
    ],
)
def test_to_minor_refuses_inexact_or_negative_amounts(amount: str, currency: str) -> None:
    with pytest.raises(InvalidAmount):
        to_minor(Decimal(amount), currency)


def test_billing_counts_decimals_as_the_contract_does() -> None:
    # One rule: an amount the contract lets through is exactly what billing can store.
    assert all(exponent(code) == decimal_places(code) for code in CURRENCIES)
    assert exponent("jpy") == exponent("JPY") == 0


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
    # Unvalidated: billing's own guards are tested with fees the contract refuses (zero, inexact).
    return Decision.model_construct(
        allowed=True,
        classification=classification,
        fee=Fee.model_construct(amount=Decimal(fee[0]), currency=fee[1], code="D9987", code_system="CDT")
        if fee
        else None,
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


@pytest.mark.parametrize("choice", ["paypal", "Stripe", ""])
def test_an_unknown_gateway_is_a_configuration_error(choice: str) -> None:
    with pytest.raises(ConfigurationError, match="PAYMENT_GATEWAY"):
        make_gateway(choice)
    with pytest.raises(ConfigurationError, match="PAYMENT_GATEWAY"):
        definition(BillingSettings(payment_gateway=choice))


def test_stripe_without_an_api_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="STRIPE_API_KEY"):
        make_gateway("stripe")
    with pytest.raises(ConfigurationError, match="STRIPE_API_KEY"):
        definition(BillingSettings(payment_gateway="stripe"))


async def test_stripe_is_built_from_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENT_GATEWAY", "stripe")
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_123")
    monkeypatch.setenv("STRIPE_API_BASE", "http://127.0.0.1:12111")
    settings = BillingSettings()
    assert definition(settings).name == "billing"
    assert "sk_test_123" not in repr(settings)  # the key is a secret: never printed
    gateway = make_gateway(
        settings.payment_gateway,
        stripe_api_key=settings.stripe_api_key.get_secret_value(),
        stripe_api_base=settings.stripe_api_base,
    )
    try:
        assert isinstance(gateway, StripeGateway) and gateway.charges_saved_cards
    finally:
        await gateway.close()


def test_sandbox_is_the_gateway_in_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "development")
    monkeypatch.delenv("PAYMENT_GATEWAY", raising=False)
    assert BillingSettings().payment_gateway == "sandbox"
    assert isinstance(make_gateway("sandbox"), SandboxGateway)


def test_billing_consumes_commands_and_publishes_every_billing_event() -> None:
    billing = definition(BillingSettings())
    assert set(billing.consumes) == {"booking.events.v1", "billing.commands.v1", "upstream.patients.v1"}
    assert set(billing.consumes["billing.commands.v1"]) == {"charge.adjustment_requested", "charge.review_decided"}
    assert set(billing.consumes["upstream.patients.v1"]) == {"patient.card_registered", "patient.card_removed"}
    assert {m.event_type for m in billing.publishes["billing.events.v1"]} == {
        "charge.created",
        "payment.captured",
        "payment.failed",
        "deposit.refunded",
        "deposit.kept",
        "credit_note.issued",
        "charge.adjusted",
        "charge.adjustment_rejected",
        "charge.waived",
        "charge.review_rejected",
        "payment.refunded",
        "turnaway_pay.owed",
    }


# --- adjustments: who may change a charge, and what ------------------------------------------


@pytest.mark.parametrize(
    ("roles", "allowed"),
    [
        (["owner"], True),
        (["manager"], True),
        (["biller"], True),
        (["therapist", "financial"], True),
        (["financial", "therapist", "reception"], True),
        (["Biller"], True),  # role names are not case-sensitive
        (["therapist"], False),
        (["financial"], False),  # the financial role alone is not enough
        (["reception"], False),
        (["dentist", "financial"], False),
        ([], False),
    ],
)
def test_who_may_adjust_a_charge(roles: list[str], allowed: bool) -> None:
    assert may_adjust(roles) is allowed


TERMS = ChargeTerms(4500, "AUD", "D9987", "CDT")


def adjust(
    *,
    roles: tuple[str, ...] = ("biller",),
    charge: ChargeTerms | None = TERMS,
    status: str = "outstanding",
    amount: str | None = None,
    code: str | None = None,
    code_system: str | None = None,
) -> AdjustmentDecision:
    return decide_adjustment(
        roles=list(roles),
        charge=charge,
        charge_status=status if charge is not None else None,  # type: ignore[arg-type]
        amount=Decimal(amount) if amount is not None else None,
        code=code,
        code_system=code_system,
    )


@pytest.mark.parametrize(
    ("kwargs", "after"),
    [
        ({"amount": "30.00"}, ChargeTerms(3000, "AUD", "D9987", "CDT")),
        ({"amount": "30"}, ChargeTerms(3000, "AUD", "D9987", "CDT")),
        ({"code": "D9986"}, ChargeTerms(4500, "AUD", "D9986", "CDT")),
        ({"code": "CANX", "code_system": "custom"}, ChargeTerms(4500, "AUD", "CANX", "custom")),
        ({"amount": "50.00", "code": "D9986"}, ChargeTerms(5000, "AUD", "D9986", "CDT")),
        ({"code": " D9986 "}, ChargeTerms(4500, "AUD", "D9986", "CDT")),
        # the amount of an owed charge only; a code is corrected whatever the charge's state
        ({"code": "D9986", "status": "paid"}, ChargeTerms(4500, "AUD", "D9986", "CDT")),
        ({"code": "D9986", "status": "pending_capture"}, ChargeTerms(4500, "AUD", "D9986", "CDT")),
        ({"amount": "45.00", "code": "D9986", "status": "paid"}, ChargeTerms(4500, "AUD", "D9986", "CDT")),
        # second release: a paid fee's amount changes too (the money moves: plan_fee_change)
        ({"amount": "30.00", "status": "paid"}, ChargeTerms(3000, "AUD", "D9987", "CDT")),
        ({"amount": "60.00", "status": "paid"}, ChargeTerms(6000, "AUD", "D9987", "CDT")),
        ({"amount": "30.00", "status": "pending_review"}, ChargeTerms(3000, "AUD", "D9987", "CDT")),
        ({"roles": ("therapist", "financial"), "amount": "40.00"}, ChargeTerms(4000, "AUD", "D9987", "CDT")),
        (
            {"charge": ChargeTerms(6000, "JPY", "D9986", "CDT"), "amount": "5000"},
            ChargeTerms(5000, "JPY", "D9986", "CDT"),
        ),
    ],
)
def test_an_allowed_adjustment_says_before_and_after(kwargs: dict, after: ChargeTerms) -> None:
    before = kwargs.get("charge", TERMS)
    assert adjust(**kwargs) == AdjustmentDecision(before, after=after)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"roles": ("therapist",), "amount": "30.00"}, "forbidden"),
        ({"roles": ("reception",), "code": "D9986"}, "forbidden"),
        ({"roles": ("reception",), "charge": None, "amount": "30.00"}, "forbidden"),  # learns nothing
        ({"charge": None, "amount": "30.00"}, "not_found"),
        ({}, "invalid_request"),  # asks for nothing
        ({"amount": "45.00"}, "invalid_request"),  # changes nothing
        ({"code": "D9987", "code_system": "CDT"}, "invalid_request"),
        ({"amount": "45.001"}, "invalid_request"),  # more decimals than AUD has: never rounded
        ({"charge": ChargeTerms(6000, "JPY", "D9986", "CDT"), "amount": "59.5"}, "invalid_request"),
        ({"amount": "-5.00"}, "invalid_request"),
        ({"amount": "0.00"}, "invalid_request"),  # writing a charge off is not an adjustment
        ({"code": "  "}, "invalid_request"),
        ({"code_system": "ICD"}, "invalid_request"),
        ({"amount": "30.00", "status": "pending_capture"}, "capture_in_progress"),
        ({"amount": "30.00", "status": "waived"}, "waived"),
    ],
)
def test_a_refused_adjustment_says_why(kwargs: dict, reason: str) -> None:
    decision = adjust(**kwargs)
    assert (decision.rejection, decision.after, decision.adjusted) == (reason, None, False)


def test_adjusted_terms_keep_the_currencys_decimals() -> None:
    after = adjust(charge=ChargeTerms(1234, "KWD", "X", "custom"), amount="2.5").after
    assert after is not None and format(after.amount, "f") == "2.500" and after.amount_minor == 2500


# --- Stripe's unit for amounts, which is not always the currency's decimal places ---------------


@pytest.mark.parametrize(
    ("amount_minor", "currency", "sent"),
    [
        (4500, "AUD", 4500),
        (6000, "JPY", 6000),
        (6000, "jpy", 6000),
        (1230, "KWD", 1230),
        (3000, "HUF", 300000),  # HUF has no decimals, but Stripe counts it in two
        (5000, "ISK", 500000),  # likewise ISK
        (250000, "IDR", 25000000),
        (50000, "UGX", 50000),  # zero-decimal for Stripe as for Babel
    ],
)
def test_stripe_is_sent_amounts_in_its_own_unit(amount_minor: int, currency: str, sent: int) -> None:
    from billing.gateway import stripe_amount

    assert stripe_amount(amount_minor, currency) == sent


def test_an_amount_stripe_cannot_hold_exactly_is_refused() -> None:
    from billing.gateway import stripe_amount

    with pytest.raises(ValueError):
        stripe_amount(12345, "CLF")  # 1.2345 CLF: four decimals, Stripe's unit has two


# --- what Stripe's PaymentIntent answer means (the HTTP round trip: test_billing_stripe.py) --


@pytest.mark.parametrize(
    ("intent", "status", "reason"),
    [
        ({"status": "succeeded"}, "captured", None),
        ({"status": "requires_action"}, "failed", "authentication_required"),  # nobody there to authenticate
        (
            {
                "status": "requires_payment_method",
                "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds"},
            },
            "failed",
            "insufficient_funds",
        ),
        (
            {
                "status": "requires_payment_method",
                "last_payment_error": {"code": "card_declined", "decline_code": "generic_decline"},
            },
            "failed",
            "card_declined",
        ),
        ({"status": "canceled"}, "failed", "payment_intent_canceled"),
    ],
)
def test_a_payment_intents_status_is_a_payment_result(intent: dict, status: str, reason: str | None) -> None:
    from billing.gateway import _from_intent

    result = _from_intent({"id": "pi_1", **intent}, 4500, "AUD")
    assert (result.status, result.failure_reason, result.reference, result.amount_minor) == (
        status,
        reason,
        "pi_1",
        4500,
    )


def test_a_payment_intent_still_processing_is_an_unknown_outcome() -> None:
    from billing.gateway import GatewayUnavailable, _from_intent

    with pytest.raises(GatewayUnavailable):
        _from_intent({"id": "pi_1", "status": "processing"}, 4500, "AUD")


# --- a request Stripe refuses as wrong in itself is a failed payment, not an unknown outcome ---


def _invalid_request(status: int, code: str | None, intent: str | None = None) -> Any:
    import stripe

    error: dict[str, Any] = {"type": "invalid_request_error", "message": "No such PaymentMethod: 'pm_x' (cus_x)"}
    if code:
        error["code"] = code
    if intent:
        error["payment_intent"] = {"id": intent}
    return stripe.InvalidRequestError(
        error["message"], "payment_method", code, None, status, {"error": error}, {"request-id": "req_1"}
    )


@pytest.mark.parametrize(
    ("status", "code", "intent", "expected"),
    [
        (400, "resource_missing", None, ("invalid_request", None)),
        (400, None, "pi_9", ("invalid_request", "pi_9")),  # a detached payment method: no code
        (400, "amount_too_small", None, ("invalid_amount", None)),
        (400, "amount_too_large", None, ("invalid_amount", None)),
        (404, "resource_missing", None, None),  # a wrong URL: needs a person, not a failed payment
        (400, "idempotency_key_in_use", None, None),  # outcome unknown: asked again, same key
    ],
)
def test_a_request_stripe_refuses_is_a_failed_payment(
    status: int, code: str | None, intent: str | None, expected: tuple[str, str] | None
) -> None:
    from billing.gateway import _refused

    result = _refused(_invalid_request(status, code, intent), 4500, "AUD")
    if expected is None:
        assert result is None
        return
    assert result is not None
    assert (result.status, result.failure_reason, result.reference, result.amount_minor, result.currency) == (
        "failed",
        *expected,
        4500,
        "AUD",
    )
    assert "pm_x" not in repr(result) and "cus_x" not in repr(result)  # Stripe's message is not copied


async def test_an_amount_stripe_cannot_hold_fails_without_asking_stripe() -> None:
    # Nothing listens on the base address: a request would be a connection error, not a result.
    gateway = StripeGateway("sk_test_unit", api_base="http://127.0.0.1:9", timeout=1.0)
    try:
        result = await gateway.charge(
            idempotency_key="ch_1", amount_minor=12345, currency="CLF", customer_ref="cus_1", payment_method="pm_1"
        )
    finally:
        await gateway.close()
    assert (result.status, result.failure_reason, result.reference) == ("failed", "invalid_amount", None)


# --- second release: review, fees changed after money moved -----------------------------------


def test_a_fee_with_a_review_window_waits_until_the_window_ends() -> None:
    fee = Fee.new(amount=Decimal("45.00"), currency="AUD", code="D9987", code_system="CDT")
    at = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)

    def plan(review_hours: int | None, charge_card: bool):
        decision = Decision.new(
            allowed=True,
            classification="late",
            fee=fee,
            charge_card=charge_card,
            deposit_action="none",
            policy_version="r1.s1",
            review_hours=review_hours,
        )
        return plan_charge("cancellation", "bk-1", "req-1", decision, at)

    assert (plan(48, True).status, plan(48, True).review_until) == ("pending_review", at + timedelta(hours=48))
    assert (plan(0, True).status, plan(0, True).review_until) == ("pending_capture", None)
    assert (plan(None, False).status, plan(None, False).review_until) == ("outstanding", None)


@pytest.mark.parametrize(
    ("status", "amount", "paid", "card", "waive", "expected"),
    [
        # lower than paid: the difference back to the card
        ("paid", 3000, 4500, True, False, FeeChange("paid", 3000, refund_minor=1500)),
        ("paid", 3000, 4500, False, False, FeeChange("paid", 3000, refund_minor=1500)),
        # higher: charged to the card it was paid with, or owed
        ("paid", 6000, 4500, True, False, FeeChange("pending_capture", 4500, top_up_minor=1500)),
        ("paid", 6000, 4500, False, False, FeeChange("outstanding", 4500)),
        # never taken (no card, or the card failed): only what is owed changes
        ("outstanding", 6000, 0, True, False, FeeChange("outstanding", 0)),
        ("outstanding", 3000, 0, False, False, FeeChange("outstanding", 0)),
        # part paid, lowered to what was paid: settled
        ("outstanding", 4500, 4500, True, False, FeeChange("paid", 4500)),
        # waived: everything paid comes back
        ("paid", 4500, 4500, True, True, FeeChange("waived", 0, refund_minor=4500)),
        ("outstanding", 4500, 0, False, True, FeeChange("waived", 0)),
        ("pending_review", 4500, 0, True, True, FeeChange("waived", 0)),
        # in review nothing was taken: it keeps waiting
        ("pending_review", 3000, 0, True, False, FeeChange("pending_review", 0)),
    ],
)
def test_changing_a_fee_moves_the_difference(status, amount, paid, card, waive, expected) -> None:
    assert (
        plan_fee_change(status=status, amount_minor=amount, paid_minor=paid, charge_card=card, waive=waive) == expected
    )


def test_a_fee_being_captured_is_not_changed() -> None:
    with pytest.raises(ValueError):
        plan_fee_change(status="pending_capture", amount_minor=100, paid_minor=0, charge_card=True)


def test_movement_ids_are_derived_from_charge_request_and_kind() -> None:
    assert movement_id("c", "r", "refund") == movement_id("c", "r", "refund")
    assert (
        len({movement_id("c", "r", "refund"), movement_id("c", "r", "top_up"), movement_id("c", "r2", "refund")}) == 3
    )


def review(**overrides):
    fields = {"roles": ["biller"], "charge": TERMS, "charge_status": "pending_review", "decision": "approve"}
    fields |= overrides
    if isinstance(fields.get("amount"), str):
        fields["amount"] = Decimal(fields["amount"])
    return decide_review(**fields)


@pytest.mark.parametrize(
    ("kwargs", "answer"),
    [
        ({}, ReviewAnswer(outcome="approved")),
        ({"roles": ["therapist", "financial"]}, ReviewAnswer(outcome="approved")),
        ({"decision": "waive"}, ReviewAnswer(outcome="waived")),
        ({"decision": "waive", "charge_status": "paid"}, ReviewAnswer(outcome="waived")),  # refunded in full
        ({"decision": "waive", "charge_status": "outstanding"}, ReviewAnswer(outcome="waived")),
        (
            {"decision": "edit", "amount": "30.00"},
            ReviewAnswer(outcome="edited", after=ChargeTerms(3000, "AUD", "D9987", "CDT")),
        ),
        (
            {"decision": "edit", "code": "D9986"},
            ReviewAnswer(outcome="edited", after=ChargeTerms(4500, "AUD", "D9986", "CDT")),
        ),
        ({"decision": "edit", "amount": "45.00"}, ReviewAnswer(outcome="approved")),  # changes nothing
        # refused before anything about the charge is told
        ({"roles": ["reception"], "charge": None}, ReviewAnswer(rejection="forbidden")),
        ({"roles": ["therapist"]}, ReviewAnswer(rejection="forbidden")),
        ({"charge": None}, ReviewAnswer(rejection="not_found")),
        ({"charge_status": "paid"}, ReviewAnswer(rejection="not_pending")),
        (
            {"decision": "edit", "amount": "30.00", "charge_status": "outstanding"},
            ReviewAnswer(rejection="not_pending"),
        ),
        ({"decision": "waive", "charge_status": "pending_capture"}, ReviewAnswer(rejection="not_pending")),
        ({"decision": "waive", "charge_status": "waived"}, ReviewAnswer(rejection="not_pending")),
    ],
)
def test_a_review_decision_is_answered_once_by_role_then_charge(kwargs: dict, answer: ReviewAnswer) -> None:
    assert review(**kwargs) == answer


@pytest.mark.parametrize("kwargs", [{}, {"amount": "45.001"}, {"code": " "}, {"code_system": "ICD"}])
def test_an_edit_the_charge_cannot_take_is_refused_and_the_fee_keeps_waiting(kwargs: dict) -> None:
    answer = review(decision="edit", **kwargs)
    assert answer.outcome is None and answer.rejection is None and answer.refused

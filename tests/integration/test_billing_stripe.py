"""Billing's Stripe gateway against a local HTTP server that speaks the part of Stripe's API billing
uses (POST /v1/payment_intents, form-encoded, Idempotency-Key honoured: the same key gets the same
answer and creates one PaymentIntent), driven through the official `stripe` SDK:

- the gateway sends our key, the amount in minor units, the lower-case currency, the customer
  and the saved payment method, off-session and confirmed; Stripe's answers map to captured,
  failed with Stripe's decline reason, or "outcome unknown, ask again with the same key";
- the capture task never asks Stripe for a patient without a saved card (`no_card_on_file`),
  and a capture retried after a lost answer creates one PaymentIntent;
- the billing service as a real process with PAYMENT_GATEWAY=stripe: a late cancellation charged
  to a card, a declined card, and a SIGKILL while the card is being charged followed by a
  redelivery of the event: one PaymentIntent at Stripe, one payment.captured.

The service process shares the `billing` consumer group and schema with any other billing process
running against the same infrastructure (that is how replicas run): another replica may consume
this module's events, and any Stripe replica may capture their charges; a sandbox replica never
takes the charge of a patient with a saved card, and every patient here has one (the
no-card case runs in-process, against a schema of its own).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs

import asyncpg
import pytest
from test_billing_service import cancelled, decision, no_show, on

from billing import capture, repository
from billing.domain import charge_id, movement_id
from billing.gateway import GatewayUnavailable, IdempotencyKeyReused, SandboxGateway, StripeGateway
from billing.settings import BillingSettings
from shared import background
from shared.testing import EventWatcher, Publisher, ScratchSchemas, ServiceProcess, free_port, unique
from shared.topics import BILLING_COMMANDS, BILLING_EVENTS, BOOKING_EVENTS, UPSTREAM_PATIENTS

pytestmark = [
    pytest.mark.integration,
    # The SDK's HTTPXClient posts its form body with httpx's deprecated `data=<str>`: its noise, not ours.
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"),
]

API_KEY = "sk_test_local_billing"
WEBHOOK_SECRET = "whsec_local_billing_test"
MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "billing" / "migrations"
START = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)

# Stripe's own test payment methods, and what Stripe answers when one is charged.
SUCCEEDS = "pm_card_visa"
DECLINES = {
    "pm_card_visa_chargeDeclined": ("card_declined", "generic_decline", "Your card was declined."),
    "pm_card_visa_chargeDeclinedInsufficientFunds": (
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_chargeDeclinedExpiredCard": ("expired_card", "expired_card", "Your card has expired."),
    "pm_card_authenticationRequired": (
        "authentication_required",
        "authentication_required",
        "This transaction requires authentication.",
    ),
}
REQUIRED = ("amount", "currency", "customer", "payment_method", "confirm", "off_session")
REFUND_REQUIRED = ("payment_intent", "amount")
# A payment method detached from its customer: Stripe refuses it (400 invalid_request_error).
DETACHED = "pm_detached"
MINIMUM = 50  # Stripe's smallest charge in a two-decimal currency's minor units (0.50)


# --- a local server that speaks the part of Stripe's API billing uses --------------------------


class FakeStripe:
    """POST /v1/payment_intents with Stripe's semantics for what billing relies on:

    - form-encoded parameters (`metadata[charge_id]=…`), `Authorization: Bearer <secret key>`;
    - `Idempotency-Key`: the first request with a key creates the PaymentIntent (money moves) and
      its answer is stored; a later request with the key and the same parameters gets that stored
      answer (`Idempotent-Replayed: true`) and creates nothing; other parameters are refused (400
      `idempotency_error`); while the first is still in flight, 409 (key in use);
    - a card error is HTTP 402 `card_error` with `code`, `decline_code` and the PaymentIntent, as
      Stripe answers an off-session confirmation that the card's bank refused.

    Faults, for tests: `fail_next(status)` answers the next request with a 5xx before doing
    anything (Stripe stores nothing then); `delay(key, seconds)` holds the first answer for that
    key after the PaymentIntent was created (a client killed meanwhile never hears it).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.intents: dict[str, dict[str, Any]] = {}  # every PaymentIntent created, by id
        self.refunds: dict[str, dict[str, Any]] = {}  # every Refund created, by id
        self.requests: list[dict[str, Any]] = []  # every request: key, params, headers, answer
        self._answers: dict[str, tuple[dict[str, str], int, dict[str, Any]]] = {}
        self._in_flight: set[str] = set()
        self._failures: list[int] = []
        self._delays: dict[str, float] = {}
        self._server: ThreadingHTTPServer | None = None

    # test controls -----------------------------------------------------------------------

    def fail_next(self, status: int = 500, times: int = 1) -> None:
        with self.lock:
            self._failures.extend([status] * times)

    def delay(self, key: str, seconds: float) -> None:
        with self.lock:
            self._delays[key] = seconds

    def intents_for(self, key: str) -> list[dict[str, Any]]:
        with self.lock:
            return [pi for pi in self.intents.values() if pi["metadata"].get("charge_id") == key]

    def refunds_for(self, key: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.refunds.values() if r["metadata"].get("refund_id") == key]

    def requests_for(self, key: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["key"] == key]

    async def wait_for_request(self, key: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.requests_for(key):
            if time.monotonic() > deadline:
                raise AssertionError(f"no request with Idempotency-Key {key} within {timeout}s")
            await asyncio.sleep(0.05)

    # the server ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self, port: int = 0) -> FakeStripe:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                params = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
                headers = {name.title(): value for name, value in self.headers.items()}
                status, answer, extra = fake._answer(self.path, headers, params)
                payload = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Request-Id", "req_" + uuid.uuid4().hex[:14])
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client is gone (killed): Stripe has done the work all the same

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-stripe", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _answer(
        self, path: str, headers: dict[str, str], params: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        key = headers.get("Idempotency-Key", "")
        seen = {"key": key, "params": params, "headers": headers, "at": time.monotonic()}
        with self.lock:
            self.requests.append(seen)
            if headers.get("Authorization") != f"Bearer {API_KEY}":
                return 401, _error("invalid_request_error", "Invalid API Key provided."), {}
            if path not in ("/v1/payment_intents", "/v1/refunds"):
                return 404, _error("invalid_request_error", f"Unrecognized request URL (POST: {path})."), {}
            if self._failures:
                status = self._failures.pop(0)
                return status, _error("api_error", "Something went wrong on Stripe's end."), {}
            if key in self._answers:
                first_params, status, answer = self._answers[key]
                if first_params != params:
                    return (
                        400,
                        _error(
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                        ),
                        {},
                    )
                seen["replayed"] = True
                return status, answer, {"Idempotent-Replayed": "true", "Idempotency-Key": key}
            if key in self._in_flight:
                return (
                    409,
                    _error(
                        "invalid_request_error",
                        "There is currently another in-progress request using this Idempotency-Key; try again later.",
                        code="idempotency_key_in_use",
                    ),
                    {},
                )
            missing = [p for p in (REQUIRED if path == "/v1/payment_intents" else REFUND_REQUIRED) if not params.get(p)]
            if missing:
                return (
                    400,
                    _error("invalid_request_error", f"Missing required param: {missing[0]}.", code="parameter_missing"),
                    {},
                )
            refused = _refusal(params) if path == "/v1/payment_intents" else self._refund_refusal(params)
            if refused is not None:  # failed validation: nothing created, nothing stored for the key
                return 400, refused, {}
            if key:
                self._in_flight.add(key)
            # The PaymentIntent or Refund exists: money moved (or not).
            status, answer = self._create(params) if path == "/v1/payment_intents" else self._refund(params)
            delay = self._delays.pop(key, 0.0)
        if delay:
            time.sleep(delay)
        with self.lock:
            if key:
                self._answers[key] = (params, status, answer)
                self._in_flight.discard(key)
        return status, answer, {"Idempotency-Key": key} if key else {}

    def _create(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        intent_id = "pi_" + uuid.uuid4().hex[:24]
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": int(params["amount"]),
            "amount_received": 0,
            "capture_method": "automatic",
            "confirmation_method": "automatic",
            "created": int(time.time()),
            "currency": params["currency"],
            "customer": params["customer"],
            "payment_method": params["payment_method"],
            "livemode": False,
            "metadata": {k[len("metadata[") : -1]: v for k, v in params.items() if k.startswith("metadata[")},
            "status": "succeeded",
            "last_payment_error": None,
            "latest_charge": "ch_" + uuid.uuid4().hex[:24],
        }
        self.intents[intent_id] = intent
        decline = DECLINES.get(params["payment_method"])
        if decline is None:
            intent["amount_received"] = intent["amount"]
            return 200, intent
        code, decline_code, message = decline
        error = {
            "type": "card_error",
            "code": code,
            "decline_code": decline_code,
            "message": message,
            "doc_url": f"https://stripe.com/docs/error-codes/{code}",
        }
        intent["status"] = "requires_payment_method"
        intent["last_payment_error"] = dict(error)
        return 402, {
            "error": {**error, "payment_intent": intent, "request_log_url": "https://dashboard.stripe.com/test/logs"}
        }

    def _refund_refusal(self, params: dict[str, str]) -> dict[str, Any] | None:
        intent = self.intents.get(params["payment_intent"])
        if intent is None:
            return _error("invalid_request_error", "No such payment_intent.", code="resource_missing")
        given_back = sum(r["amount"] for r in self.refunds.values() if r["payment_intent"] == intent["id"])
        if int(params["amount"]) > intent["amount_received"] - given_back:
            return _error(
                "invalid_request_error", "Refund amount is greater than unrefunded amount.", code="amount_too_large"
            )
        return None

    def _refund(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        refund = {
            "id": "re_" + uuid.uuid4().hex[:24],
            "object": "refund",
            "amount": int(params["amount"]),
            "currency": self.intents[params["payment_intent"]]["currency"],
            "payment_intent": params["payment_intent"],
            "metadata": {k[len("metadata[") : -1]: v for k, v in params.items() if k.startswith("metadata[")},
            "status": "succeeded",
            "created": int(time.time()),
        }
        self.refunds[refund["id"]] = refund
        return 200, refund


def _refusal(params: dict[str, str]) -> dict[str, Any] | None:
    """Stripe's 400 `invalid_request_error` for a request that is wrong in itself."""
    if int(params["amount"]) < MINIMUM:
        return _error("invalid_request_error", "Amount must be at least $0.50 usd", code="amount_too_small")
    if params["payment_method"] == DETACHED:
        return _error(
            "invalid_request_error",
            f"The provided PaymentMethod {DETACHED} was detached from a Customer. It may not be used again.",
        )
    return None


def _error(type_: str, message: str, code: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type_, "message": message}
    if code:
        error["code"] = code
    return {"error": error}


@pytest.fixture(scope="module")
def fake_stripe() -> Iterator[FakeStripe]:
    server = FakeStripe().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def gateway(fake_stripe: FakeStripe) -> AsyncIterator[StripeGateway]:
    the_gateway = StripeGateway(API_KEY, api_base=fake_stripe.url, timeout=5.0)
    try:
        yield the_gateway
    finally:
        await the_gateway.close()


# --- the gateway on its own -----------------------------------------------------------------


async def test_the_gateway_sends_the_key_amount_currency_customer_and_card(
    gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    key = str(uuid.uuid4())
    result = await gateway.charge(
        idempotency_key=key, amount_minor=4500, currency="AUD", customer_ref="cus_A1", payment_method=SUCCEEDS
    )
    [intent] = fake_stripe.intents_for(key)
    assert (result.status, result.reference, result.amount_minor, result.currency, result.failure_reason) == (
        "captured",
        intent["id"],
        4500,
        "AUD",
        None,
    )
    [request] = fake_stripe.requests_for(key)
    assert request["headers"]["Idempotency-Key"] == key
    assert request["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert request["params"] == {
        "amount": "4500",  # minor units, never a decimal
        "currency": "aud",  # Stripe's currencies are lower case
        "customer": "cus_A1",
        "payment_method": SUCCEEDS,
        "off_session": "true",
        "confirm": "true",
        "metadata[charge_id]": key,
    }


async def test_amounts_go_in_the_currencys_minor_units(gateway: StripeGateway, fake_stripe: FakeStripe) -> None:
    for amount_minor, currency in ((6000, "JPY"), (1234, "KWD")):
        key = str(uuid.uuid4())
        await gateway.charge(
            idempotency_key=key,
            amount_minor=amount_minor,
            currency=currency,
            customer_ref="cus_A1",
            payment_method=SUCCEEDS,
        )
        [request] = fake_stripe.requests_for(key)
        assert (request["params"]["amount"], request["params"]["currency"]) == (str(amount_minor), currency.lower())


@pytest.mark.parametrize(
    ("payment_method", "reason"),
    [
        ("pm_card_visa_chargeDeclined", "card_declined"),  # generic_decline says less than card_declined
        ("pm_card_visa_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
        ("pm_card_authenticationRequired", "authentication_required"),
    ],
)
async def test_card_errors_are_failed_payments_with_stripes_reason(
    gateway: StripeGateway, fake_stripe: FakeStripe, payment_method: str, reason: str
) -> None:
    key = str(uuid.uuid4())
    result = await gateway.charge(
        idempotency_key=key, amount_minor=4500, currency="USD", customer_ref="cus_B2", payment_method=payment_method
    )
    [intent] = fake_stripe.intents_for(key)
    assert (result.status, result.failure_reason, result.reference) == ("failed", reason, intent["id"])


@pytest.mark.parametrize(
    ("amount_minor", "payment_method", "reason"),
    [(4500, DETACHED, "invalid_request"), (MINIMUM - 1, SUCCEEDS, "invalid_amount")],
)
async def test_a_request_stripe_refuses_is_a_failed_payment(
    gateway: StripeGateway, fake_stripe: FakeStripe, amount_minor: int, payment_method: str, reason: str
) -> None:
    key = str(uuid.uuid4())
    result = await gateway.charge(
        idempotency_key=key,
        amount_minor=amount_minor,
        currency="AUD",
        customer_ref="cus_R1",
        payment_method=payment_method,
    )
    assert (result.status, result.failure_reason) == ("failed", reason)
    assert result.reference is None  # Stripe created no PaymentIntent, and its request id is no payment reference
    assert fake_stripe.intents_for(key) == []


async def test_the_same_key_gets_the_first_answer_and_one_payment_intent(
    gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    paid, declined = str(uuid.uuid4()), str(uuid.uuid4())
    for key, payment_method in ((paid, SUCCEEDS), (declined, "pm_card_visa_chargeDeclinedInsufficientFunds")):
        args = {
            "idempotency_key": key,
            "amount_minor": 4500,
            "currency": "AUD",
            "customer_ref": "cus_C3",
            "payment_method": payment_method,
        }
        first = await gateway.charge(**args)
        again = await gateway.charge(**args)
        assert first == again
        assert len(fake_stripe.intents_for(key)) == 1
        assert [r.get("replayed", False) for r in fake_stripe.requests_for(key)] == [False, True]


async def test_stripe_errors_and_no_answer_are_retried_with_the_same_key(
    gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    key = str(uuid.uuid4())
    args = {
        "idempotency_key": key,
        "amount_minor": 4500,
        "currency": "AUD",
        "customer_ref": "cus_D4",
        "payment_method": SUCCEEDS,
    }
    for status in (500, 503, 429):
        fake_stripe.fail_next(status)
        with pytest.raises(GatewayUnavailable):
            await gateway.charge(**args)
    assert fake_stripe.intents_for(key) == []  # Stripe did nothing
    result = await gateway.charge(**args)
    assert result.captured and len(fake_stripe.intents_for(key)) == 1
    assert {r["headers"]["Idempotency-Key"] for r in fake_stripe.requests_for(key)} == {key}

    nobody = StripeGateway(API_KEY, api_base=f"http://127.0.0.1:{free_port()}", timeout=2.0)
    try:
        with pytest.raises(GatewayUnavailable):  # connection refused: outcome unknown
            await nobody.charge(**args)
    finally:
        await nobody.close()


async def test_a_key_still_in_flight_is_an_unknown_outcome(gateway: StripeGateway, fake_stripe: FakeStripe) -> None:
    key = str(uuid.uuid4())
    args = {
        "idempotency_key": key,
        "amount_minor": 4500,
        "currency": "AUD",
        "customer_ref": "cus_E5",
        "payment_method": SUCCEEDS,
    }
    fake_stripe.delay(key, 1.5)
    first = asyncio.create_task(gateway.charge(**args))
    await fake_stripe.wait_for_request(key)
    with pytest.raises(GatewayUnavailable):  # 409: the first request with that key is still running
        await gateway.charge(**args)
    assert (await first).captured
    assert len(fake_stripe.intents_for(key)) == 1


async def test_a_key_reused_with_other_parameters_is_refused(gateway: StripeGateway, fake_stripe: FakeStripe) -> None:
    key = str(uuid.uuid4())
    await gateway.charge(
        idempotency_key=key, amount_minor=4500, currency="AUD", customer_ref="cus_F6", payment_method=SUCCEEDS
    )
    with pytest.raises(IdempotencyKeyReused):
        await gateway.charge(
            idempotency_key=key, amount_minor=9000, currency="AUD", customer_ref="cus_F6", payment_method=SUCCEEDS
        )
    assert len(fake_stripe.intents_for(key)) == 1


async def test_a_wrong_api_key_is_not_taken_for_a_passing_outage(fake_stripe: FakeStripe) -> None:
    import stripe

    wrong = StripeGateway("sk_test_wrong", api_base=fake_stripe.url, timeout=5.0)
    try:
        with pytest.raises(stripe.AuthenticationError):
            await wrong.charge(
                idempotency_key=str(uuid.uuid4()),
                amount_minor=100,
                currency="AUD",
                customer_ref="cus_G7",
                payment_method=SUCCEEDS,
            )
    finally:
        await wrong.close()


# --- the capture task with Stripe, in-process against a throwaway copy of the schema ---------


@pytest.fixture
async def scratch_pool(infra: Any) -> AsyncIterator[asyncpg.Pool]:
    """The billing migrations in a schema of its own, so no running billing process captures
    the test's charges."""
    async with ScratchSchemas(infra.admin_dsn, "billing_stripe", MIGRATIONS, max_size=10) as scratch:
        yield await scratch.new()


async def _pending_charge(pool: asyncpg.Pool, patient: str, *, card: tuple[str, str] | None) -> str:
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
                    "patient_id": patient,
                    "kind": "late_cancellation",
                    "amount_minor": 4500,
                    "currency": "AUD",
                    "code": "D9987",
                    "code_system": "CDT",
                    "charge_card": True,
                    "status": "pending_capture",
                    "policy_version": "r1.s2",
                    "occurred_at": START,
                    "correlation_id": None,
                },
            ],
        )
        if card is not None:
            await conn.execute(
                "INSERT INTO patient_cards (patient_id, stripe_customer_id, stripe_payment_method_id) VALUES ($1, $2, $3)",
                patient,
                *card,
            )
    return charge_id(booking, request)


async def _capture(pool: asyncpg.Pool, gateway: Any, *, timeout: float = 5.0) -> int:
    """One round of the capture job (shared.background) with `gateway`; how many charges it leased."""
    settings = BillingSettings(capture_batch_size=10, capture_lease_seconds=0.0, gateway_timeout_seconds=timeout)
    done = await background.run_round(
        capture.card_capture(settings, saved_cards=gateway.charges_saved_cards),
        pool=pool,
        service="billing",
        deps=SimpleNamespace(gateway=gateway),
    )
    return done.claimed


async def test_no_saved_card_fails_without_asking_stripe(
    scratch_pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    the_charge = await _pending_charge(scratch_pool, unique("pat"), card=None)
    assert await _capture(scratch_pool, gateway) == 1
    assert fake_stripe.requests_for(the_charge) == []
    row = await scratch_pool.fetchrow(
        "SELECT c.status, c.failure_reason, p.status AS payment, p.gateway, p.gateway_ref"
        " FROM charges c JOIN payments p USING (charge_id) WHERE c.charge_id = $1",
        the_charge,
    )
    assert dict(row) == {
        "status": "outstanding",
        "failure_reason": "no_card_on_file",
        "payment": "failed",
        "gateway": "stripe",
        "gateway_ref": None,
    }
    [event] = await scratch_pool.fetch("SELECT payload::text AS payload FROM outbox")
    assert json.loads(event["payload"])["data"]["failure_reason"] == "no_card_on_file"


async def test_a_request_stripe_refuses_fails_once_and_is_not_asked_again(
    scratch_pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    the_charge = await _pending_charge(scratch_pool, unique("pat"), card=("cus_L3", DETACHED))
    assert await _capture(scratch_pool, gateway) == 1
    assert await _capture(scratch_pool, gateway) == 0  # nothing left to capture: no retry for ever
    [request] = fake_stripe.requests_for(the_charge)
    assert request["headers"]["Idempotency-Key"] == the_charge
    row = await scratch_pool.fetchrow(
        "SELECT c.status, c.failure_reason, p.status AS payment, p.gateway_ref"
        " FROM charges c JOIN payments p USING (charge_id) WHERE c.charge_id = $1",
        the_charge,
    )
    assert (row["status"], row["failure_reason"], row["payment"]) == ("outstanding", "invalid_request", "failed")
    assert row["gateway_ref"] is None
    events = [json.loads(e["payload"]) for e in await scratch_pool.fetch("SELECT payload::text AS payload FROM outbox")]
    [failed] = [e for e in events if e["data"]["charge_id"] == the_charge]
    assert failed["type"] == "payment.failed" and failed["data"]["failure_reason"] == "invalid_request"
    assert DETACHED not in json.dumps(failed)  # Stripe's message is not passed on


async def test_a_capture_retried_after_a_lost_answer_creates_one_payment_intent(
    scratch_pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    patient = unique("pat")
    the_charge = await _pending_charge(scratch_pool, patient, card=("cus_H8", SUCCEEDS))
    fake_stripe.delay(the_charge, 2.0)  # Stripe charges the card, then answers too late for us

    assert await _capture(scratch_pool, gateway, timeout=0.5) == 1  # timed out: outcome unknown
    assert len(fake_stripe.intents_for(the_charge)) == 1
    assert (
        await scratch_pool.fetchval("SELECT status FROM charges WHERE charge_id = $1", the_charge) == "pending_capture"
    )

    assert await _capture(scratch_pool, gateway) == 1  # still in flight at Stripe: 409, unknown again
    assert (
        await scratch_pool.fetchval("SELECT status FROM charges WHERE charge_id = $1", the_charge) == "pending_capture"
    )
    await asyncio.sleep(2.0)
    assert await _capture(scratch_pool, gateway) == 1  # Stripe's stored answer

    [intent] = fake_stripe.intents_for(the_charge)
    requests = fake_stripe.requests_for(the_charge)
    assert len(requests) == 3 and {r["headers"]["Idempotency-Key"] for r in requests} == {the_charge}
    assert requests[-1].get("replayed") is True
    row = await scratch_pool.fetchrow(
        "SELECT c.status, p.gateway_ref, p.idempotency_key, c.capture_attempts"
        " FROM charges c JOIN payments p USING (charge_id) WHERE c.charge_id = $1",
        the_charge,
    )
    assert dict(row) == {
        "status": "paid",
        "gateway_ref": intent["id"],
        "idempotency_key": the_charge,
        "capture_attempts": 3,
    }
    assert intent["customer"] == "cus_H8" and intent["payment_method"] == SUCCEEDS
    assert await _capture(scratch_pool, gateway) == 0


async def test_the_sandbox_leaves_a_saved_cards_charge_to_stripe(
    scratch_pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    saved = await _pending_charge(scratch_pool, unique("pat"), card=("cus_K2", SUCCEEDS))
    unsaved = await _pending_charge(scratch_pool, unique("pat"), card=None)
    sandbox = SandboxGateway()
    assert await _capture(scratch_pool, sandbox) == 1  # only the patient without a saved card
    assert len(sandbox.captures) == 1
    assert await scratch_pool.fetchval("SELECT status FROM charges WHERE charge_id = $1", unsaved) == "paid"
    assert await scratch_pool.fetchval("SELECT status FROM charges WHERE charge_id = $1", saved) == "pending_capture"
    assert await _capture(scratch_pool, gateway) == 1  # Stripe takes it
    assert await scratch_pool.fetchval("SELECT status FROM charges WHERE charge_id = $1", saved) == "paid"
    assert len(fake_stripe.intents_for(saved)) == 1


async def test_a_key_stripe_may_have_forgotten_is_not_sent_again(
    scratch_pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    first_sent_long_ago = await _pending_charge(scratch_pool, unique("pat"), card=("cus_I9", SUCCEEDS))
    raised_long_ago = await _pending_charge(scratch_pool, unique("pat"), card=("cus_J1", SUCCEEDS))
    # first sent 23.5 hours ago and never answered: Stripe may be about to forget the key
    await scratch_pool.execute(
        "UPDATE charges SET first_capture_at = now() - interval '23 hours 30 minutes', capture_attempts = 9"
        " WHERE charge_id = $1",
        first_sent_long_ago,
    )
    # raised long ago but never sent (billing was down): its key is new to Stripe, so it is sent
    await scratch_pool.execute(
        "UPDATE charges SET created_at = now() - interval '3 days' WHERE charge_id = $1", raised_long_ago
    )
    assert await _capture(scratch_pool, gateway) == 2  # both leased (and backed off) ...
    assert fake_stripe.requests_for(first_sent_long_ago) == []  # ... one not sent: a person settles it
    assert (
        await scratch_pool.fetchval("SELECT status FROM charges WHERE charge_id = $1", first_sent_long_ago)
        == "pending_capture"
    )
    assert len(fake_stripe.intents_for(raised_long_ago)) == 1
    assert await scratch_pool.fetchval("SELECT status FROM charges WHERE charge_id = $1", raised_long_ago) == "paid"


# --- the billing service as a process, with PAYMENT_GATEWAY=stripe ---------------------------


@pytest.fixture(scope="module")
def stripe_billing(
    infra: Any, fake_stripe: FakeStripe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        "billing",
        infra.bootstrap,
        infra.admin_dsn,
        tmp_path_factory.mktemp("billing-stripe-logs"),
        env={
            "PAYMENT_GATEWAY": "stripe",
            "STRIPE_API_KEY": API_KEY,
            "STRIPE_API_BASE": fake_stripe.url,
            "CAPTURE_POLL_INTERVAL_SECONDS": "0.1",
            "CAPTURE_LEASE_SECONDS": "1",
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        },
    )
    try:
        process.start()
        yield process
    finally:
        process.stop()


async def save_card(infra: Any, patient_id: str, customer: str, payment_method: str) -> None:
    conn = await asyncpg.connect(infra.admin_dsn)
    try:
        await conn.execute(
            "INSERT INTO billing.patient_cards (patient_id, stripe_customer_id, stripe_payment_method_id)"
            " VALUES ($1, $2, $3)",
            patient_id,
            customer,
            payment_method,
        )
    finally:
        await conn.close()


async def test_a_late_cancellation_is_charged_to_the_saved_card_through_stripe(
    stripe_billing: ServiceProcess, fake_stripe: FakeStripe, infra: Any, publisher: Publisher
) -> None:
    practice, patient, booking = unique("practice"), unique("pat"), unique("bk")
    await save_card(infra, patient, "cus_late1", SUCCEEDS)
    data = cancelled(booking, practice, patient, decision("late", fee=("45.00", "AUD", "D9987"), charge_card=True))
    key = charge_id(booking, data["request_id"])
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data, source="service/booking")
        [created] = await w.wait_for(on(booking, "charge.created"))
        [captured] = await w.wait_for(on(booking, "payment.captured"))
    assert captured.data == {"charge_id": key, "booking_id": booking, "amount": "45.00", "currency": "AUD"}
    assert created.offset < captured.offset

    [intent] = fake_stripe.intents_for(key)
    assert (intent["amount"], intent["currency"], intent["customer"], intent["payment_method"], intent["status"]) == (
        4500,
        "aud",
        "cus_late1",
        SUCCEEDS,
        "succeeded",
    )
    [request] = fake_stripe.requests_for(key)
    assert request["headers"]["Idempotency-Key"] == key

    record = stripe_billing.get_json(f"/bookings/{booking}/billing")
    assert record["charges"][0]["status"] == "paid"
    [payment] = record["payments"]
    assert (payment["status"], payment["gateway"], payment["gateway_ref"], payment["amount"]) == (
        "captured",
        "stripe",
        intent["id"],
        "45.00",
    )
    assert [(a["action"], a["actor"]) for a in record["audit"]] == [
        ("charge_created", data["actor"]["kind"] + ":" + data["actor"]["id"]),
        ("payment_captured", "service/billing"),
    ]
    patient_view = stripe_billing.get_json(f"/patients/{patient}/charges")
    assert [p["gateway_ref"] for p in patient_view["payments"]] == [intent["id"]]


async def test_a_declined_card_is_a_failed_payment_and_the_charge_stays_owed(
    stripe_billing: ServiceProcess, fake_stripe: FakeStripe, infra: Any, publisher: Publisher
) -> None:
    practice, booking, broke = unique("practice"), unique("bk"), unique("pat")
    await save_card(infra, broke, "cus_broke", "pm_card_visa_chargeDeclinedInsufficientFunds")
    data = no_show(booking, practice, broke, decision("no_show", fee=("60.00", "AUD", "D9986"), charge_card=True))
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        await publisher.event(BOOKING_EVENTS, "booking.no_show_recorded", booking, data, source="service/booking")
        [failed] = await w.wait_for(on(booking, "payment.failed"))
        await w.settle(1.0)
        assert not w.matching(on(booking, "payment.captured"))
    key = charge_id(booking, data["request_id"])
    assert failed.data == {
        "charge_id": key,
        "booking_id": booking,
        "amount": "60.00",
        "currency": "AUD",
        "failure_reason": "insufficient_funds",
    }
    [intent] = fake_stripe.intents_for(key)
    assert intent["status"] == "requires_payment_method"
    [charge] = stripe_billing.get_json(f"/patients/{broke}/charges")["charges"]
    assert (charge["status"], charge["failure_reason"], charge["amount"]) == (
        "outstanding",
        "insufficient_funds",
        "60.00",
    )
    assert stripe_billing.get_json(f"/practices/{practice}/balances")["balances"] == [
        {"currency": "AUD", "outstanding": "60.00", "pending_capture": "0.00", "pending_review": "0.00", "charges": 1}
    ]
    audit = stripe_billing.get_json(f"/bookings/{booking}/billing")["audit"]
    assert audit[-1]["action"] == "payment_failed" and "insufficient_funds" in audit[-1]["reason"]
    assert audit[-1]["detail"]["gateway_ref"] == intent["id"]


async def test_a_crash_mid_charge_and_a_redelivered_event_charge_the_card_once(
    stripe_billing: ServiceProcess, fake_stripe: FakeStripe, infra: Any, publisher: Publisher
) -> None:
    practice, patient, booking = unique("practice"), unique("pat"), unique("bk")
    await save_card(infra, patient, "cus_crash", SUCCEEDS)
    data = cancelled(
        booking,
        practice,
        patient,
        decision("late", fee=("45.00", "AUD", "D9987"), charge_card=True, deposit_action="keep"),
        deposit=("20.00", "AUD"),
    )
    key = charge_id(booking, data["request_id"])
    # Stripe takes the first request, charges the card, and holds its answer: we kill billing meanwhile.
    fake_stripe.delay(key, 4.0)
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        env = await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data, source="service/booking")
        await w.wait_for(on(booking, "charge.created"))
        await fake_stripe.wait_for_request(key)
        stripe_billing.kill()  # SIGKILL while the capture call is in flight
        assert len(fake_stripe.intents_for(key)) == 1  # the card was charged; billing never heard so
        assert not w.matching(on(booking, "payment.captured"))

        stripe_billing.start()
        # The same event delivered again, and the same cancellation replayed under a new envelope id.
        await publisher.event(
            BOOKING_EVENTS, "booking.cancelled", booking, data, source="service/booking", event_id=env["id"]
        )
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data, source="service/booking")
        [captured] = await w.wait_for(on(booking, "payment.captured"), timeout=90)
        # Let the replays reach the restarted consumer (it waits for the killed member to leave
        # the group) and anything they could still cause arrive.
        marker = unique("bk")
        after = cancelled(marker, practice, unique("pat"), decision("late", fee=("10.00", "AUD", "D9987")))
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", marker, after, source="service/booking")
        await w.wait_for(on(marker, "charge.created"), timeout=90)
        await w.settle(2.0)
        assert len(w.matching(on(booking, "charge.created"))) == 1
        assert len(w.matching(on(booking, "deposit.kept"))) == 1
        assert len(w.matching(on(booking, "payment.captured"))) == 1
        assert not w.matching(on(booking, "payment.failed"))

    [intent] = fake_stripe.intents_for(key)  # exactly one PaymentIntent at Stripe
    requests = fake_stripe.requests_for(key)
    assert len(requests) >= 2 and {r["headers"]["Idempotency-Key"] for r in requests} == {key}
    assert captured.data == {"charge_id": key, "booking_id": booking, "amount": "45.00", "currency": "AUD"}
    record = stripe_billing.get_json(f"/bookings/{booking}/billing")
    assert len(record["charges"]) == 1 and record["charges"][0]["status"] == "paid"
    [payment] = record["payments"]
    assert (payment["gateway_ref"], payment["status"]) == (intent["id"], "captured")
    assert [a["action"] for a in record["audit"]] == ["charge_created", "deposit_kept", "payment_captured"]


# --- second release: cards on file, refunds of a paid fee, Stripe's webhooks --------------------


async def register_card(publisher: Publisher, infra: Any, practice: str, patient: str, customer: str, pm: str) -> None:
    """patient.card_registered on upstream.patients.v1, then wait until billing holds it (the
    card and the cancellation travel on different topics: no order between them)."""
    await publisher.event(
        UPSTREAM_PATIENTS,
        "patient.card_registered",
        patient,
        {
            "patient_id": patient,
            "practice_id": practice,
            "gateway": "stripe",
            "customer_ref": customer,
            "payment_method_ref": pm,
            "registered_at": datetime.now(UTC).isoformat(),
            "brand": "visa",
            "last4": "4242",
        },
        source="upstream/portal",
    )
    conn = await asyncpg.connect(infra.admin_dsn)
    try:
        deadline = time.monotonic() + 60
        while not await conn.fetchval(
            "SELECT payment_method_ref = $3 FROM billing.practice_cards WHERE practice_id = $1 AND patient_id = $2",
            practice,
            patient,
            pm,
        ):
            assert time.monotonic() < deadline, "billing never recorded the card on file"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def lower_fee(charge: str, amount: str) -> dict[str, Any]:
    return {
        "request_id": unique("adj"),
        "charge_id": charge,
        "actor": {"id": unique("staff"), "roles": ["manager"]},
        "amount": amount,
    }


async def test_a_registered_card_is_charged_and_a_sigkill_mid_refund_gives_one_refund(
    stripe_billing: ServiceProcess, fake_stripe: FakeStripe, infra: Any, publisher: Publisher
) -> None:
    practice, patient, booking = unique("practice"), unique("pat"), unique("bk")
    await register_card(publisher, infra, practice, patient, "cus_registered", SUCCEEDS)
    data = cancelled(booking, practice, patient, decision("late", fee=("45.00", "AUD", "D9987"), charge_card=True))
    key = charge_id(booking, data["request_id"])
    command = lower_fee(key, "20.00")
    refund_key = movement_id(key, command["request_id"], "refund")
    fake_stripe.delay(refund_key, 4.0)  # Stripe refunds, then holds its answer: billing is killed meanwhile
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data, source="service/booking")
        await w.wait_for(on(booking, "payment.captured"))
        [intent] = fake_stripe.intents_for(key)
        assert (intent["customer"], intent["payment_method"]) == ("cus_registered", SUCCEEDS)  # the card on file

        sent = await publisher.event(BILLING_COMMANDS, "charge.adjustment_requested", key, command)
        await fake_stripe.wait_for_request(refund_key)
        stripe_billing.kill()  # SIGKILL while the refund call is in flight
        assert len(fake_stripe.refunds_for(refund_key)) == 1  # Stripe gave the money back; billing never heard
        assert not w.matching(on(booking, "payment.refunded"))

        stripe_billing.start()
        # The command delivered again, and replayed under a new envelope id.
        await publisher.event(BILLING_COMMANDS, "charge.adjustment_requested", key, command, event_id=sent["id"])
        await publisher.event(BILLING_COMMANDS, "charge.adjustment_requested", key, command)
        [refunded] = await w.wait_for(on(booking, "payment.refunded"), timeout=90)
        marker = unique("bk")
        after = cancelled(marker, practice, unique("pat"), decision("late", fee=("10.00", "AUD", "D9987")))
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", marker, after, source="service/booking")
        await w.wait_for(on(marker, "charge.created"), timeout=90)
        await w.settle(2.0)
        assert len(w.matching(on(booking, "payment.refunded"))) == 1
        assert len(w.matching(on(booking, "charge.adjusted"))) == 1

    [refund] = fake_stripe.refunds_for(refund_key)  # exactly one Refund at Stripe
    assert (refund["amount"], refund["payment_intent"]) == (2500, intent["id"])
    requests = fake_stripe.requests_for(refund_key)
    assert len(requests) >= 2 and {r["headers"]["Idempotency-Key"] for r in requests} == {refund_key}
    assert refunded.data == {
        "charge_id": key,
        "booking_id": booking,
        "refund_id": refund_key,
        "amount": "25.00",
        "currency": "AUD",
        "reason": "adjustment",
    }
    record = stripe_billing.get_json(f"/bookings/{booking}/billing")
    [movement] = record["movements"]
    assert (movement["status"], movement["gateway_ref"], movement["amount"]) == ("succeeded", refund["id"], "25.00")
    assert (record["charges"][0]["amount"], record["charges"][0]["paid"]) == ("20.00", "20.00")
    actions = [a["action"] for a in record["audit"]]
    assert actions.count("refund_requested") == 1 and actions.count("refund_succeeded") == 1


def signed(payload: bytes, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    """A Stripe-Signature header as Stripe makes it: HMAC-SHA256 of "<t>.<body>"."""
    import hashlib
    import hmac

    t = at if at is not None else int(time.time())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def post_webhook(process: ServiceProcess, body: bytes, signature: str | None) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    request = urllib.request.Request(
        f"http://127.0.0.1:{process.port}/stripe/webhook", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, None


async def test_a_webhook_settles_a_payment_once_and_only_a_signed_bounded_event_is_believed(
    stripe_billing: ServiceProcess, fake_stripe: FakeStripe, infra: Any, publisher: Publisher
) -> None:
    practice, patient, booking = unique("practice"), unique("pat"), unique("bk")
    await register_card(publisher, infra, practice, patient, "cus_hooked", SUCCEEDS)
    data = cancelled(booking, practice, patient, decision("late", fee=("45.00", "AUD", "D9987"), charge_card=True))
    key = charge_id(booking, data["request_id"])
    fake_stripe.delay(key, 6.0)  # the capture's answer is late: Stripe's webhook arrives first
    async with EventWatcher(infra.bootstrap, [BILLING_EVENTS]) as w:
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data, source="service/booking")
        await fake_stripe.wait_for_request(key)
        await asyncio.sleep(0.5)
        [intent] = fake_stripe.intents_for(key)
        event = {
            "id": "evt_" + uuid.uuid4().hex,
            "object": "event",
            "type": "payment_intent.succeeded",
            "api_version": "2024-06-20",
            "created": int(time.time()),
            "data": {"object": {**intent, "status": "succeeded"}},
        }
        body = json.dumps(event).encode()
        assert post_webhook(stripe_billing, body, signed(body)) == (
            200,
            {"recorded": True, "outcome": "payment_captured"},
        )
        assert post_webhook(stripe_billing, body, signed(body)) == (
            200,
            {"recorded": False, "outcome": "already_received"},
        )
        [captured] = await w.wait_for(on(booking, "payment.captured"))
        await asyncio.sleep(7.0)  # the capture's own answer arrives, and changes nothing
        await w.settle(1.0)
        assert len(w.matching(on(booking, "payment.captured"))) == 1
    assert captured.data["charge_id"] == key
    record = stripe_billing.get_json(f"/bookings/{booking}/billing")
    [payment] = record["payments"]
    assert (payment["status"], payment["gateway_ref"]) == ("captured", intent["id"])
    [hook] = [a for a in record["audit"] if a["action"] == "stripe_webhook"]
    assert (hook["actor"], hook["detail"]["event_id"]) == ("stripe:webhook", event["id"])
    assert [a["actor"] for a in record["audit"] if a["action"] == "payment_captured"] == ["stripe:webhook"]

    # Refused: unsigned, signed with another secret, signed too long ago, too large, not an event.
    other = json.dumps({**event, "id": "evt_" + uuid.uuid4().hex}).encode()
    assert post_webhook(stripe_billing, other, None)[0] == 403
    assert post_webhook(stripe_billing, other, signed(other, "whsec_someone_else"))[0] == 403
    assert post_webhook(stripe_billing, other, signed(other, at=int(time.time()) - 3600))[0] == 403
    huge = b'{"id": "evt_x", "pad": "' + b"x" * (300 * 1024) + b'"}'
    assert post_webhook(stripe_billing, huge, signed(huge))[0] == 413
    assert post_webhook(stripe_billing, b"not json", signed(b"not json"))[0] == 400
    not_an_event = json.dumps({"id": "nope", "type": "x", "data": {}}).encode()
    assert post_webhook(stripe_billing, not_an_event, signed(not_an_event))[0] == 400

"""The payment-gateway port, its sandbox processor and the Stripe adapter.

Guarantees:
- Every charge goes through `PaymentGateway.charge(idempotency_key=…)`; billing passes the
  charge id as the key, so asking twice for the same charge returns the first result and moves
  money at most once wherever the processor honours the key (the sandbox does; Stripe does).
- `PaymentResult` says what happened: `captured`, or `failed` with a reason a person can act on
  (`card_declined`, `insufficient_funds`, …). `GatewayUnavailable` means the outcome is not
  known: the caller asks again later with the same key, never with a new one.
- The sandbox is a real, in-process processor simulation: deterministic by the customer
  reference's suffix (configurable), remembering every idempotency key for its lifetime, and
  keeping the list of charges that moved money so tests can count them.
- Stripe (`StripeGateway`) charges the saved card with one PaymentIntent created and confirmed
  off-session through the official SDK's async client, with our key as Stripe's
  `Idempotency-Key`: `succeeded` is captured; a card error (HTTP 402) is failed with Stripe's
  decline reason; a 5xx, 409 (the key is in use), 429 or a connection error is
  `GatewayUnavailable` (ask again later, same key). A request that is itself wrong and that no
  retry will fix is failed too, so the practice hears of it: an amount Stripe's unit cannot hold
  (never sent) or one Stripe refuses as too small or too large is `invalid_amount`; any other
  HTTP 400 `invalid_request_error` (a detached or unknown payment method, …) is
  `invalid_request`. Stripe's message is never copied (it can name the customer's objects).
  Anything else (a bad API key, a 404, a key reused with other parameters) is raised as it is:
  it needs a person, and is never turned into a failed payment.
- `charges_saved_cards` says which cards a gateway charges. True (Stripe): only a card saved
  with it; the capture task never asks it for a patient without one and fails that charge with
  `no_card_on_file` itself. False (the sandbox): never a saved card; such charges are left for
  a real processor, so a sandbox replica left running beside Stripe ones (a switch-over) can
  never mark a real card's charge paid without money moving.
- A configuration that cannot work (an unknown gateway, Stripe without an API key) is refused
  at startup with a sentence saying what to set.
- Every refund goes through `PaymentGateway.refund(idempotency_key=…)` against the processor's
  payment it gives back from; billing passes the refund's derived id as the key, so a refund
  asked for twice gives the money back once. `RefundResult` is `succeeded`, `pending` (the
  processor took it and settles it later: a webhook tells) or `failed` (with a reason);
  `GatewayUnavailable` again means the outcome is not known.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, Protocol

from shared.tracing import external_call

from .domain import from_minor

PaymentStatus = Literal["captured", "failed"]
RefundStatus = Literal["succeeded", "pending", "failed"]

# Customer-reference suffix -> the decline a real processor would give for such a card.
DEFAULT_SANDBOX_DECLINES: dict[str, str] = {
    "-decline": "card_declined",
    "-nofunds": "insufficient_funds",
    "-expired": "expired_card",
}


class ConfigurationError(RuntimeError):
    """The service is configured for something it cannot do; it refuses to start."""


class GatewayUnavailable(Exception):
    """The processor could not be reached or did not answer: the outcome is unknown, retry
    with the same idempotency key."""


class IdempotencyKeyReused(ValueError):
    """The same idempotency key with different parameters: a bug of the caller, never retried."""


@dataclass(frozen=True)
class PaymentResult:
    status: PaymentStatus
    reference: str | None  # the processor's id of this payment attempt; None when never asked
    amount_minor: int
    currency: str
    failure_reason: str | None = None

    @property
    def captured(self) -> bool:
        return self.status == "captured"


@dataclass(frozen=True)
class RefundResult:
    status: RefundStatus
    reference: str | None  # the processor's id of the refund; None when it was never asked
    failure_reason: str | None = None


class PaymentGateway(Protocol):
    name: str
    # True: it charges only a card saved with it (a customer and payment method of its own), and
    # is never called for a patient without one. False: it never charges a saved card.
    charges_saved_cards: bool
    # How long the processor remembers an idempotency key (None: as long as it runs). After
    # that, asking again could charge twice, so the capture task stops asking.
    key_lifetime: timedelta | None

    async def charge(
        self,
        *,
        idempotency_key: str,
        amount_minor: int,  # billing's minor units: the currency's decimal places (billing.domain)
        currency: str,
        customer_ref: str,
        payment_method: str | None = None,
    ) -> PaymentResult: ...

    async def refund(
        self, *, idempotency_key: str, payment_ref: str, amount_minor: int, currency: str
    ) -> RefundResult: ...

    async def close(self) -> None: ...


_SANDBOX_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cancellations:billing:sandbox")


class SandboxGateway:
    """An in-process card processor: succeeds unless the customer reference ends with one of
    the configured decline suffixes, and answers a known idempotency key with its first result."""

    name = "sandbox"
    charges_saved_cards = False  # a simulation: the patient id is its customer reference
    key_lifetime = None  # remembers every key for its process lifetime

    def __init__(self, declines: Mapping[str, str] | None = None) -> None:
        self._declines = dict(DEFAULT_SANDBOX_DECLINES if declines is None else declines)
        self._results: dict[str, tuple[tuple[int, str, str], PaymentResult]] = {}
        self.captures: list[PaymentResult] = []  # money actually moved, once per key
        self._refunds: dict[str, tuple[tuple[str, int, str], RefundResult]] = {}
        self.refunds: list[tuple[str, int, str]] = []  # money given back: (payment_ref, amount_minor, currency)

    async def charge(
        self,
        *,
        idempotency_key: str,
        amount_minor: int,
        currency: str,
        customer_ref: str,
        payment_method: str | None = None,
    ) -> PaymentResult:
        params = (amount_minor, currency, customer_ref)
        known = self._results.get(idempotency_key)
        if known is not None:
            first_params, first_result = known
            if first_params != params:
                raise IdempotencyKeyReused(f"idempotency key {idempotency_key} was first used for other parameters")
            return first_result
        # No await between the check above and the record below: two concurrent calls with
        # one key in this event loop cannot both charge.
        result = self._decide(idempotency_key, amount_minor, currency, customer_ref)
        self._results[idempotency_key] = (params, result)
        if result.captured:
            self.captures.append(result)
        return result

    def _decide(self, key: str, amount_minor: int, currency: str, customer_ref: str) -> PaymentResult:
        reference = "sbx_" + uuid.uuid5(_SANDBOX_NAMESPACE, key).hex[:24]
        if amount_minor <= 0:
            return PaymentResult("failed", reference, amount_minor, currency, failure_reason="invalid_amount")
        for suffix, reason in self._declines.items():
            if customer_ref.endswith(suffix):
                return PaymentResult("failed", reference, amount_minor, currency, failure_reason=reason)
        return PaymentResult("captured", reference, amount_minor, currency)

    async def refund(self, *, idempotency_key: str, payment_ref: str, amount_minor: int, currency: str) -> RefundResult:
        params = (payment_ref, amount_minor, currency)
        known = self._refunds.get(idempotency_key)
        if known is not None:
            if known[0] != params:
                raise IdempotencyKeyReused(f"idempotency key {idempotency_key} was first used for other parameters")
            return known[1]
        if amount_minor <= 0:
            result = RefundResult("failed", None, failure_reason="invalid_amount")
        else:
            result = RefundResult("succeeded", "sbx_re_" + uuid.uuid5(_SANDBOX_NAMESPACE, idempotency_key).hex[:24])
            self.refunds.append(params)
        self._refunds[idempotency_key] = (params, result)
        return result

    async def close(self) -> None:
        return None


# How Stripe counts `amount` (docs.stripe.com/currencies, "Minor units in API amounts"): two
# decimals for every currency not listed here, ISK, HUF and TWD included. This is Stripe's API
# unit, not a currency's decimal places: billing's `amount_minor` counts those (the contract's
# rule, Babel's data), and the two differ for some currencies (HUF: 0 decimals, 2 for Stripe).
_STRIPE_ZERO_DECIMAL = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"}
)
_STRIPE_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})


def stripe_amount(amount_minor: int, currency: str) -> int:
    """Billing's minor units of `currency` as Stripe's `amount`: 3000 HUF (`amount_minor` 3000)
    is 300000, 6000 JPY is 6000, 45.00 AUD (4500) is 4500. Never rounds: an amount Stripe's unit
    cannot hold exactly is refused (ValueError)."""
    code = currency.upper()
    places = 0 if code in _STRIPE_ZERO_DECIMAL else 3 if code in _STRIPE_THREE_DECIMAL else 2
    scaled = from_minor(amount_minor, code).scaleb(places)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"Stripe counts {code} in {places} decimals, which cannot hold this amount exactly")
    return int(scaled)


class StripeGateway:
    """Stripe through the official SDK (`stripe.StripeClient` with its httpx async client).

    One PaymentIntent per charge, created and confirmed in one call, off-session, on the
    patient's saved customer and payment method, with our idempotency key as Stripe's
    `Idempotency-Key`: Stripe answers a repeated key with the first answer (for 24 hours) and
    never creates a second PaymentIntent for it. The SDK's own retries are off: the capture task
    retries with backoff and the same key, so there is one retry policy, ours.
    """

    name = "stripe"
    charges_saved_cards = True
    key_lifetime = timedelta(hours=24)  # Stripe prunes idempotency keys after 24 hours

    def __init__(self, api_key: str, *, api_base: str | None = None, timeout: float = 20.0) -> None:
        import stripe  # the SDK is only loaded where Stripe is configured

        self._stripe = stripe
        self._http = stripe.HTTPXClient(timeout=timeout)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
            http_client=self._http,
            max_network_retries=0,
        )

    async def charge(
        self,
        *,
        idempotency_key: str,
        amount_minor: int,
        currency: str,
        customer_ref: str,
        payment_method: str | None = None,
    ) -> PaymentResult:
        if not payment_method:
            raise ValueError("Stripe charges a saved card: a payment method is required")
        stripe = self._stripe
        try:
            amount = stripe_amount(amount_minor, currency)  # as Stripe counts them (JPY 6000 is 6000)
        except ValueError:
            # Permanent: the same amount can never be sent. Stripe was not asked (no reference).
            return PaymentResult("failed", None, amount_minor, currency, failure_reason="invalid_amount")
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency.lower(),
            "customer": customer_ref,
            "payment_method": payment_method,
            "off_session": True,  # the patient is not there to authenticate
            "confirm": True,
            # Stripe compares a repeated key's parameters with the first request's: everything
            # sent must be the same on every attempt, so only the key itself goes in metadata.
            "metadata": {"charge_id": idempotency_key},
        }
        try:
            with external_call("stripe charge", "stripe"):
                intent = await self._client.v1.payment_intents.create_async(
                    params,  # type: ignore[arg-type]
                    {"idempotency_key": idempotency_key},
                )
        except stripe.CardError as exc:
            return _declined(exc, amount_minor, currency)
        except stripe.InvalidRequestError as exc:
            refused = _refused(exc, amount_minor, currency)
            if refused is None:
                raise
            return refused
        except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as exc:
            # 5xx, 409 (the same key is in flight), 429, or no answer: outcome unknown.
            raise GatewayUnavailable(f"Stripe did not answer: {type(exc).__name__} {exc.http_status}") from exc
        except stripe.IdempotencyError as exc:
            raise IdempotencyKeyReused(f"Stripe refused idempotency key {idempotency_key}: {exc.user_message}") from exc
        return _from_intent(intent.to_dict(), amount_minor, currency)

    async def refund(self, *, idempotency_key: str, payment_ref: str, amount_minor: int, currency: str) -> RefundResult:
        """One Refund of (part of) the PaymentIntent `payment_ref`, keyed like a charge. A refund
        Stripe refuses as wrong in itself (already refunded, more than was charged) is failed;
        no answer, 409, 429 or 5xx is an unknown outcome."""
        stripe = self._stripe
        try:
            amount = stripe_amount(amount_minor, currency)
        except ValueError:
            return RefundResult("failed", None, failure_reason="invalid_amount")
        params: dict[str, Any] = {
            "payment_intent": payment_ref,
            "amount": amount,
            "metadata": {"refund_id": idempotency_key},  # how a webhook finds the refund again
        }
        try:
            with external_call("stripe refund", "stripe"):
                refund = await self._client.v1.refunds.create_async(
                    params,  # type: ignore[arg-type]
                    {"idempotency_key": idempotency_key},
                )
        except stripe.InvalidRequestError as exc:
            error = (exc.json_body or {}).get("error") or {}
            code = error.get("code") or getattr(exc, "code", None)
            if exc.http_status != 400 or code in ("idempotency_key_in_use", "rate_limit", "lock_timeout"):
                raise
            return RefundResult("failed", None, failure_reason=str(code or "invalid_request")[:64])
        except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as exc:
            raise GatewayUnavailable(f"Stripe did not answer: {type(exc).__name__} {exc.http_status}") from exc
        except stripe.IdempotencyError as exc:
            raise IdempotencyKeyReused(f"Stripe refused idempotency key {idempotency_key}: {exc.user_message}") from exc
        return refund_result(refund.to_dict())

    async def close(self) -> None:
        await self._http.close_async()


def refund_result(refund: dict[str, Any]) -> RefundResult:
    """Stripe's Refund object as billing's answer (from the API or a webhook)."""
    status = refund.get("status")
    if status == "succeeded":
        return RefundResult("succeeded", refund.get("id"))
    if status in ("failed", "canceled"):
        return RefundResult("failed", refund.get("id"), failure_reason=str(refund.get("failure_reason") or status))
    return RefundResult("pending", refund.get("id"))  # pending, requires_action: Stripe tells later


def _declined(exc: Any, amount_minor: int, currency: str) -> PaymentResult:
    """A card error (HTTP 402): Stripe's decline reason, the most specific it gave."""
    error = (exc.json_body or {}).get("error") or {}
    intent = error.get("payment_intent") or {}
    return PaymentResult(
        "failed",
        intent.get("id") or exc.request_id or "unknown",
        amount_minor,
        currency,
        failure_reason=_decline_reason(error),
    )


# Stripe's `code`s for an amount outside what it accepts for the currency.
_AMOUNT_CODES = frozenset({"amount_too_small", "amount_too_large"})


def _refused(exc: Any, amount_minor: int, currency: str) -> PaymentResult | None:
    """A request Stripe refused as wrong in itself (HTTP 400 `invalid_request_error`): the same
    request would be refused again, so it is a failed payment, not an unknown outcome. None for
    what is not the request's own lasting fault: a 404 (a wrong `STRIPE_API_BASE`, …) or a key
    still in use (raised as it is, or retried)."""
    error = (exc.json_body or {}).get("error") or {}
    code = error.get("code") or getattr(exc, "code", None)
    if exc.http_status != 400 or code in ("idempotency_key_in_use", "rate_limit", "lock_timeout"):
        return None
    intent = error.get("payment_intent") or {}
    return PaymentResult(
        "failed",
        intent.get("id"),  # Stripe's request id is no payment reference
        amount_minor,
        currency,
        failure_reason="invalid_amount" if code in _AMOUNT_CODES else "invalid_request",
    )


def _decline_reason(error: dict[str, Any]) -> str:
    """Stripe's most specific reason: `insufficient_funds` (a decline code) says more than
    `card_declined` (its error code); `generic_decline` says less."""
    decline_code = error.get("decline_code")
    if decline_code and decline_code != "generic_decline":
        return decline_code
    return error.get("code") or "card_declined"


def intent_result(intent: dict[str, Any], amount_minor: int, currency: str) -> PaymentResult | None:
    """A PaymentIntent's settled outcome (from a webhook), or None while it is not settled."""
    try:
        return _from_intent(intent, amount_minor, currency)
    except GatewayUnavailable:
        return None


def _from_intent(intent: dict[str, Any], amount_minor: int, currency: str) -> PaymentResult:
    status = intent["status"]
    if status == "succeeded":
        return PaymentResult("captured", intent["id"], amount_minor, currency)
    if status == "processing":
        # Not decided yet: asking again with the same key returns this same answer until it is.
        raise GatewayUnavailable(f"PaymentIntent {intent['id']} is still processing")
    if status == "requires_action":  # off-session: the bank wants the patient, who is not there
        return PaymentResult("failed", intent["id"], amount_minor, currency, failure_reason="authentication_required")
    last_error = intent.get("last_payment_error")
    reason = _decline_reason(last_error) if last_error else f"payment_intent_{status}"
    return PaymentResult("failed", intent["id"], amount_minor, currency, failure_reason=reason)


GATEWAYS = ("sandbox", "stripe")


def require_supported(choice: str | None, *, stripe_api_key: str | None = None) -> None:
    """Refuse a configuration that cannot work, with a sentence an operator can act on.

    `choice` None is PAYMENT_GATEWAY left unset, which only development may do (BillingSettings
    then chooses the sandbox): anywhere else the gateway must be chosen explicitly.
    """
    if choice is None:
        raise ConfigurationError(
            "PAYMENT_GATEWAY is not set, and ENVIRONMENT is not 'development' (unset is production): "
            "outside development the payment gateway must be chosen explicitly. Set PAYMENT_GATEWAY=stripe "
            "(with STRIPE_API_KEY) to take real payments, PAYMENT_GATEWAY=sandbox to take none, or "
            "ENVIRONMENT=development to default to the sandbox."
        )
    if choice not in GATEWAYS:
        raise ConfigurationError(f"PAYMENT_GATEWAY={choice!r} is not a known gateway; use 'sandbox' or 'stripe'.")
    if choice == "stripe" and not stripe_api_key:
        raise ConfigurationError(
            "PAYMENT_GATEWAY=stripe needs STRIPE_API_KEY (a secret key, sk_live_… or sk_test_…); "
            "set it, or set PAYMENT_GATEWAY=sandbox."
        )


def make_gateway(
    choice: str | None,
    *,
    sandbox_declines: Mapping[str, str] | None = None,
    stripe_api_key: str | None = None,
    stripe_api_base: str | None = None,
    timeout: float = 20.0,
) -> PaymentGateway:
    require_supported(choice, stripe_api_key=stripe_api_key)
    if choice == "stripe":
        assert stripe_api_key is not None
        return StripeGateway(stripe_api_key, api_base=stripe_api_base, timeout=timeout)
    return SandboxGateway(sandbox_declines)


def charges_saved_cards(choice: str | None) -> bool:
    """Whether the gateway `make_gateway(choice)` builds charges only saved cards (see
    `PaymentGateway.charges_saved_cards`): what the capture job claims depends on it."""
    return (StripeGateway if choice == "stripe" else SandboxGateway).charges_saved_cards

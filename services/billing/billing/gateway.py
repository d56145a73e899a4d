"""The payment-gateway port and its sandbox processor.

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
- `PAYMENT_GATEWAY=stripe` is refused at startup with a sentence saying so, until it is built.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

PaymentStatus = Literal["captured", "failed"]

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
    reference: str  # the processor's id of this payment attempt
    amount_minor: int
    currency: str
    failure_reason: str | None = None

    @property
    def captured(self) -> bool:
        return self.status == "captured"


class PaymentGateway(Protocol):
    name: str

    async def charge(
        self, *, idempotency_key: str, amount_minor: int, currency: str, customer_ref: str
    ) -> PaymentResult: ...


_SANDBOX_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cancellations:billing:sandbox")


class SandboxGateway:
    """An in-process card processor: succeeds unless the customer reference ends with one of
    the configured decline suffixes, and answers a known idempotency key with its first result."""

    name = "sandbox"

    def __init__(self, declines: Mapping[str, str] | None = None) -> None:
        self._declines = dict(DEFAULT_SANDBOX_DECLINES if declines is None else declines)
        self._results: dict[str, tuple[tuple[int, str, str], PaymentResult]] = {}
        self.captures: list[PaymentResult] = []  # money actually moved, once per key

    async def charge(
        self, *, idempotency_key: str, amount_minor: int, currency: str, customer_ref: str
    ) -> PaymentResult:
        params = (amount_minor, currency, customer_ref)
        known = self._results.get(idempotency_key)
        if known is not None:
            first_params, first_result = known
            if first_params != params:
                raise IdempotencyKeyReused(
                    f"idempotency key {idempotency_key} was first used for other parameters"
                )
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


def require_supported(choice: str) -> None:
    """Refuse a gateway that is not built yet, with a sentence an operator can act on."""
    if choice == "sandbox":
        return
    if choice == "stripe":
        raise ConfigurationError(
            "PAYMENT_GATEWAY=stripe is not available yet (the Stripe adapter is a later issue); "
            "set PAYMENT_GATEWAY=sandbox or leave it unset."
        )
    raise ConfigurationError(f"PAYMENT_GATEWAY={choice!r} is not a known gateway; use 'sandbox'.")


def make_gateway(choice: str, *, sandbox_declines: Mapping[str, str] | None = None) -> PaymentGateway:
    require_supported(choice)
    return SandboxGateway(sandbox_declines)

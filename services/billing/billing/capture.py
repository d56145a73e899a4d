"""The capture task: charges the card on file for every charge waiting in `pending_capture` (a
`DueCall` on shared.background: claim and lease, call the gateway outside, record).

Guarantees:
- The gateway is called outside every database transaction, and only for a charge whose
  `pending_capture` row has committed (the consumer's handler only records it).
- The idempotency key is the charge id, for every attempt of that charge, so however often it is
  asked the processor charges the card at most once and answers with its first result.
- The answer is recorded in one statement of the recording transaction (which may record other
  charges' answers beside it, each on its own): the payment row, the charge's new status
  (`paid`, or `outstanding` when it failed: a failed charge stays owed) and the audit row, only
  while the charge still waits for it; then the `payment.captured` / `payment.failed` event in
  the outbox, and the relay is woken. While the
  database is unreachable, recording is retried for about half a minute before the lease
  decides.
- A charge is leased while its call is in flight (`next_capture_at`), so replicas do not call
  for the same charge at once; an unknown outcome (timeout, gateway down) is retried after the
  lease with backoff, with the same key.
- The card charged is the patient's card on file at the charge's practice (`practice_cards`,
  from `patient.card_registered`), else the patient's saved card (`patient_cards`): the
  processor's customer and payment method. Stripe is never called for a patient without one:
  the charge fails with `no_card_on_file` and stays owed on the account. The sandbox never takes
  the charge of a patient with a real card (it would record a payment of a real card that moved
  no money); it charges a card registered with the sandbox, or the patient id as its customer
  reference.

The window where a call can be repeated: after the gateway answered and before the transaction
that records the answer committed (a crash, a lost database connection), and when a call outlives
its lease. The next attempt calls again with the same idempotency key, and the processor returns
the first result without charging again; the sandbox remembers keys for its process lifetime,
Stripe for 24 hours. Nothing else can repeat a charge.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg

from shared.background import DueCall, WorkUnit
from shared.contracts.billing import PaymentCaptured, PaymentFailed
from shared.logging import get_logger
from shared.redaction import mask_text
from shared.topics import BILLING_EVENTS

from . import domain, repository
from .gateway import GatewayUnavailable, PaymentGateway, PaymentResult
from .settings import BillingSettings

log = get_logger(__name__)

# Stop asking this long before the processor forgets a key (clocks and leases are not exact).
KEY_LIFETIME_MARGIN = timedelta(hours=1)


class HasGateway(Protocol):
    """What the capture job needs of the service's deps: the payment gateway."""

    @property
    def gateway(self) -> PaymentGateway: ...


@dataclass(frozen=True)
class DueCharge:
    """A charge claimed for capture, with the patient's saved card (None: no card on file)."""

    charge: asyncpg.Record
    card: asyncpg.Record | None


def card_capture(settings: BillingSettings, *, saved_cards: bool) -> DueCall[DueCharge, PaymentResult, HasGateway]:
    """Background job: lease the charges due for capture, CAPTURE_BATCH_SIZE at a time, call the
    gateway for each and record its answer; every CAPTURE_POLL_INTERVAL_SECONDS. `saved_cards`
    is the configured gateway's `charges_saved_cards` (`gateway.charges_saved_cards`): False
    (the sandbox) leaves the charges of patients with a saved card alone."""

    async def claim(conn: asyncpg.Connection, now: datetime, limit: int) -> list[DueCharge]:
        charges = await repository.claim_captures(
            conn, limit=limit, lease_seconds=settings.capture_lease_seconds, saved_cards=saved_cards
        )
        cards = await repository.cards_of_charges(conn, [c["charge_id"] for c in charges]) if charges else {}
        return [DueCharge(charge, cards.get(charge["charge_id"])) for charge in charges]

    async def call(deps: HasGateway, due: DueCharge) -> PaymentResult | None:
        return await charge_card(deps.gateway, due, timeout=settings.gateway_timeout_seconds)

    return DueCall(
        name="capture_payments",
        claim=claim,
        call=call,
        record=record_payment,
        correlation=lambda due: due.charge["correlation_id"],
        key=lambda due: due.charge["charge_id"],
        interval_seconds=settings.capture_poll_interval_seconds,
        batch_size=settings.capture_batch_size,
        concurrency=settings.capture_concurrency,
        wake_on_commit=True,  # the consumer records the charges it captures
    )


async def charge_card(gateway: PaymentGateway, due: DueCharge, *, timeout: float) -> PaymentResult | None:
    """The gateway's answer for one leased charge, outside any transaction; None when it is not
    known (asked again with the same key when the lease ends) or must not be asked for."""
    if _past_key_lifetime(gateway, due.charge):
        return None
    if due.card is None and gateway.charges_saved_cards:
        return PaymentResult(
            "failed", None, due.charge["amount_minor"], due.charge["currency"], failure_reason="no_card_on_file"
        )
    return await _call_gateway(gateway, due.charge, due.card, timeout)


def _past_key_lifetime(gateway: PaymentGateway, charge: Any) -> bool:
    """True when the processor may have forgotten this charge's idempotency key (Stripe keeps keys
    24 hours from their first use, our first lease): asking again could charge the card a second
    time, so billing stops asking and says so. With the 1 h backoff cap a charge is asked about
    many times before that; only an outcome unknown for a whole day gets here: it needs a person."""
    lifetime = gateway.key_lifetime
    if lifetime is None or datetime.now(UTC) - charge["first_capture_at"] < lifetime - KEY_LIFETIME_MARGIN:
        return False
    log.error(
        "payment outcome unknown for longer than the processor keeps idempotency keys; not asking again:"
        " look the payment up at the processor by metadata charge_id and settle the charge by hand",
        charge_id=charge["charge_id"],
        attempt=charge["capture_attempts"],
        gateway=gateway.name,
    )
    return True


async def _call_gateway(gateway: PaymentGateway, charge: Any, card: Any, timeout: float) -> PaymentResult | None:
    """The gateway's answer, or None when it is not known (retried later with the same key)."""
    try:
        return await asyncio.wait_for(
            gateway.charge(
                idempotency_key=charge["charge_id"],
                amount_minor=charge["amount_minor"],
                currency=charge["currency"],
                customer_ref=card["customer_ref"] if card is not None else charge["patient_id"],
                payment_method=card["payment_method_ref"] if card is not None else None,
            ),
            timeout=timeout,
        )
    except (TimeoutError, GatewayUnavailable, OSError) as exc:
        log.warning(
            "payment outcome unknown; the charge stays pending and is retried with the same key",
            charge_id=charge["charge_id"],
            attempt=charge["capture_attempts"],
            error=type(exc).__name__,
        )
    except Exception as exc:  # noqa: BLE001 - any other failure needs a person, not a crash
        # Not a processor's answer (e.g. a key reused with other parameters): it needs a person.
        # The charge stays pending and is retried with backoff; the log says why.
        log.error(
            "payment call refused; the charge stays pending",
            charge_id=charge["charge_id"],
            attempt=charge["capture_attempts"],
            error=type(exc).__name__,
            detail=mask_text(str(exc))[:300],  # a gateway's message can name the customer's records
        )
    return None


def _why(gateway_name: str, charge: Any, result: PaymentResult) -> str:
    if result.captured:
        return f"card on file charged through {gateway_name} (policy {charge['policy_version']})"
    if result.failure_reason == "no_card_on_file":
        return f"no saved card is known for the patient, so {gateway_name} was not asked; the charge stays outstanding"
    if result.reference is None:  # not asked (an amount it cannot take), or refused before any payment
        return f"{gateway_name} did not take it: {result.failure_reason}; the charge stays outstanding"
    return f"card on file declined by {gateway_name}: {result.failure_reason}; the charge stays outstanding"


async def record_payment(
    unit: WorkUnit[HasGateway], due: DueCharge, result: PaymentResult, *, actor: str | None = None
) -> bool:
    """Record the gateway's answer once, in the unit's transaction: the payment, the charge's
    new status, the audit row and `payment.captured` / `payment.failed`. Nothing (False) when
    another attempt, or a webhook (`actor`: who told us), recorded it first."""
    charge = due.charge
    charge_id = charge["charge_id"]
    gateway_name = unit.deps.gateway.name
    # One statement: only a charge still waiting (pending_capture, nothing paid of it) takes the
    # answer; recorded already (by another attempt, or a webhook), or a top-up in flight
    # (refunds.py), it writes nothing.
    recorded = await repository.record_payment(
        unit.conn,
        payment_id=domain.payment_id(charge_id),
        charge_id=charge_id,
        status=result.status,
        amount_minor=charge["amount_minor"],
        currency=charge["currency"],
        gateway=gateway_name,
        gateway_ref=result.reference,
        idempotency_key=charge_id,
        failure_reason=result.failure_reason,
        charge_status=domain.status_after_payment(result.captured),
        audit={
            "at": unit.now,
            "actor": actor or f"service/{unit.service}",
            "action": f"payment_{result.status}",
            "practice_id": charge["practice_id"],
            "booking_id": charge["booking_id"],
            "reason": _why(gateway_name, charge, result),
            "detail": {"gateway_ref": result.reference, "attempt": charge["capture_attempts"]},
        },
    )
    if not recorded:
        return False
    amount = domain.from_minor(charge["amount_minor"], charge["currency"])
    fields = {
        "charge_id": charge_id,
        "booking_id": charge["booking_id"],
        "amount": amount,
        "currency": charge["currency"],
    }
    payload = (
        PaymentCaptured.new(**fields)
        if result.captured
        else PaymentFailed.new(**fields, failure_reason=result.failure_reason)
    )
    unit.emit(BILLING_EVENTS, payload, subject=charge["booking_id"], time=unit.now)
    log.debug("payment recorded", charge_id=charge_id, status=result.status, failure_reason=result.failure_reason)
    return True

"""The capture task: charges the card on file for every charge waiting in `pending_capture`.

Guarantees:
- The gateway is called outside every database transaction, and only for a charge whose
  `pending_capture` row has committed (the consumer's handler only records it).
- The idempotency key is the charge id, for every attempt of that charge, so however often it is
  asked the processor charges the card at most once and answers with its first result.
- The answer is recorded in one transaction of its own: the payment row, the charge's new status
  (`paid`, or `outstanding` when it failed: a failed charge stays owed), the audit row and the
  `payment.captured` / `payment.failed` event in the outbox, then the relay is woken.
- A charge is leased while its call is in flight (`next_capture_at`), so replicas do not call
  for the same charge at once; an unknown outcome (timeout, gateway down) is retried after the
  lease with backoff, with the same key.
- The card charged is the patient's saved card (`patient_cards`: the processor's customer and
  payment method). Stripe is never called for a patient without one: the charge fails with
  `no_card_on_file` and stays owed on the account. The sandbox never takes the charge of a
  patient with a saved card (it would record a payment of a real card that moved no money); it
  charges the patient id as its customer reference.

The window where a call can be repeated: after the gateway answered and before the transaction
that records the answer committed (a crash, a lost database connection), and when a call outlives
its lease. The next attempt calls again with the same idempotency key, and the processor returns
the first result without charging again; the sandbox remembers keys for its process lifetime,
Stripe for 24 hours. Nothing else can repeat a charge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from shared import outbox
from shared.contracts.billing import PaymentCaptured, PaymentFailed
from shared.logging import get_logger
from shared.service import Runtime
from shared.topics import BILLING_EVENTS

from . import domain, repository
from .gateway import GatewayUnavailable, PaymentGateway, PaymentResult
from .settings import BillingSettings

log = get_logger(__name__)

# Stop asking this long before the processor forgets a key (clocks and leases are not exact).
KEY_LIFETIME_MARGIN = timedelta(hours=1)


async def capture_payments(service: Runtime) -> None:
    """Background loop: capture what is due, then sleep until the next poll."""
    settings: BillingSettings = service.settings  # type: ignore[assignment]
    assert service.pool is not None
    gateway: PaymentGateway = service.deps.gateway
    while not service.stopping:
        handled = await capture_due(
            service.pool,
            gateway,
            source=f"service/{service.definition.name}",
            batch_size=settings.capture_batch_size,
            lease_seconds=settings.capture_lease_seconds,
            timeout=settings.gateway_timeout_seconds,
            on_committed=service.wake_relay,
        )
        if handled < settings.capture_batch_size:
            await asyncio.sleep(settings.capture_poll_interval_seconds)


async def capture_due(
    pool: asyncpg.Pool,
    gateway: PaymentGateway,
    *,
    source: str,
    batch_size: int,
    lease_seconds: float,
    timeout: float,
    on_committed: Callable[[], None],
) -> int:
    """Lease the charges due, then call the gateway and record the answer for each; returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        charges = await repository.claim_captures(
            conn, limit=batch_size, lease_seconds=lease_seconds, saved_cards=gateway.charges_saved_cards
        )
        cards = await repository.cards_of_patients(conn, list({c["patient_id"] for c in charges})) if charges else {}
    for charge in charges:
        card = cards.get(charge["patient_id"])
        if _past_key_lifetime(gateway, charge):
            continue
        if card is None and gateway.charges_saved_cards:
            result: PaymentResult | None = PaymentResult(
                "failed", None, charge["amount_minor"], charge["currency"], failure_reason="no_card_on_file"
            )
        else:
            result = await _call_gateway(gateway, charge, card, timeout)
        if result is not None and await _record(pool, gateway.name, charge, result, source):
            on_committed()
    return len(charges)


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
        charge_id=charge["charge_id"], attempt=charge["capture_attempts"], gateway=gateway.name,
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
                customer_ref=card["stripe_customer_id"] if card is not None else charge["patient_id"],
                payment_method=card["stripe_payment_method_id"] if card is not None else None,
            ),
            timeout=timeout,
        )
    except (GatewayUnavailable, asyncio.TimeoutError, OSError) as exc:
        log.warning(
            "payment outcome unknown; the charge stays pending and is retried with the same key",
            charge_id=charge["charge_id"], attempt=charge["capture_attempts"], error=type(exc).__name__,
        )
    except Exception as exc:
        # Not a processor's answer (e.g. a key reused with other parameters): it needs a person.
        # The charge stays pending and is retried with backoff; the log says why.
        log.error(
            "payment call refused; the charge stays pending",
            charge_id=charge["charge_id"], attempt=charge["capture_attempts"], error=type(exc).__name__,
            detail=str(exc)[:300],
        )
    return None


def _why(gateway_name: str, charge: Any, result: PaymentResult) -> str:
    if result.captured:
        return f"card on file charged through {gateway_name} (policy {charge['policy_version']})"
    if result.reference is None:
        return f"no saved card is known for the patient, so {gateway_name} was not asked; the charge stays outstanding"
    return f"card on file declined by {gateway_name}: {result.failure_reason}; the charge stays outstanding"


async def _record(pool: asyncpg.Pool, gateway_name: str, charge: Any, result: PaymentResult, source: str) -> bool:
    """Record the gateway's answer once; False when another attempt recorded it first."""
    charge_id = charge["charge_id"]
    now = datetime.now(UTC)
    amount = domain.from_minor(charge["amount_minor"], charge["currency"])
    async with pool.acquire() as conn, conn.transaction():
        current = await repository.lock_charge(conn, charge_id)
        if current is None or current["status"] != "pending_capture":
            return False
        await repository.record_payment(
            conn,
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
        )
        await repository.audit(
            conn,
            at=now,
            actor=source,
            action=f"payment_{result.status}",
            booking_id=charge["booking_id"],
            charge_id=charge_id,
            amount_minor=charge["amount_minor"],
            currency=charge["currency"],
            reason=_why(gateway_name, charge, result),
            detail={"gateway_ref": result.reference, "attempt": charge["capture_attempts"]},
        )
        fields = {"charge_id": charge_id, "booking_id": charge["booking_id"], "amount": amount, "currency": charge["currency"]}
        payload = (
            PaymentCaptured.new(**fields)
            if result.captured
            else PaymentFailed.new(**fields, failure_reason=result.failure_reason)
        )
        await outbox.write(
            conn,
            [
                outbox.outgoing(
                    BILLING_EVENTS,
                    payload,
                    subject=charge["booking_id"],
                    source=source,
                    correlation_id=charge["correlation_id"],
                    time=now,
                )
            ],
        )
    log.info("payment recorded", charge_id=charge_id, status=result.status, failure_reason=result.failure_reason)
    return True

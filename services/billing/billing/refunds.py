"""The refund task: gives back what a lowered or waived fee no longer owes, and charges the card
on file what a raised fee owes beyond what was paid (a `DueCall` on shared.background: claim and
lease the `pending` movements, call the gateway outside, record).

Guarantees:
- The gateway is called outside every database transaction, only for a movement whose row has
  committed (the handler that changed the fee only records it, `handlers._move_money`).
- The idempotency key is the movement id (uuid5 of the charge, the request and the kind), on
  every attempt: however often it is asked, the processor gives the money back (or takes the
  difference) at most once and answers with its first result. A refund goes back through the
  gateway and against the payment that took the money; a top-up is charged to the card on file
  at the charge's practice (or the patient's saved card) with the same gateway.
- The answer is recorded in one transaction of its own: the movement's status, what was paid of
  the charge (a top-up adds, a failed top-up leaves the difference owed: `outstanding`), the audit
  row and `payment.refunded` (a refund that succeeded) or `payment.captured` / `payment.failed`
  (a top-up). A refund the processor took but has not settled (`pending` at Stripe) is
  `processing` until Stripe's webhook (webhooks.py) settles it; a failed refund is logged at
  error level and audited for a person: the contract has no event for it.
- An unknown outcome (timeout, gateway down) is asked again when the lease ends, with backoff and
  the same key; after 23 hours (Stripe forgets keys after 24) it is no longer asked and the log
  says so at error level for a person to settle.

The window where a call can be repeated is the capture's (capture.py): after the gateway answered
and before the record committed, or when a call outlives its lease; the key makes the repeat
return the first answer without moving money again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shared.background import DueCall, WorkUnit
from shared.contracts.billing import PaymentCaptured, PaymentFailed, PaymentRefunded
from shared.logging import get_logger
from shared.redaction import mask_text
from shared.topics import BILLING_EVENTS

from . import domain, repository
from .capture import KEY_LIFETIME_MARGIN, HasGateway
from .gateway import GatewayUnavailable, PaymentGateway, PaymentResult, RefundResult
from .settings import BillingSettings

log = get_logger(__name__)


@dataclass(frozen=True)
class DueMovement:
    """A refund or top-up claimed for its call, with the card on file (top-ups only)."""

    movement: asyncpg.Record
    card: asyncpg.Record | None


Outcome = RefundResult | PaymentResult


def fee_movements(settings: BillingSettings, *, gateway_name: str) -> DueCall[DueMovement, Outcome, HasGateway]:
    """Background job: lease the refunds and top-ups of this replica's gateway due to be sent,
    call the gateway for each and record its answer; every CAPTURE_POLL_INTERVAL_SECONDS."""

    async def claim(conn: asyncpg.Connection, now: datetime, limit: int) -> list[DueMovement]:
        movements = await repository.claim_movements(
            conn, limit=limit, lease_seconds=settings.capture_lease_seconds, gateway=gateway_name
        )
        top_ups = [m["charge_id"] for m in movements if m["kind"] == "top_up"]
        cards = await repository.cards_of_charges(conn, top_ups) if top_ups else {}
        return [DueMovement(m, cards.get(m["charge_id"])) for m in movements]

    async def call(deps: HasGateway, due: DueMovement) -> Outcome | None:
        return await move_money(deps.gateway, due, timeout=settings.gateway_timeout_seconds)

    return DueCall(
        name="move_fee_differences",
        claim=claim,
        call=call,
        record=record_movement,
        correlation=lambda due: due.movement["correlation_id"],
        key=lambda due: due.movement["movement_id"],
        interval_seconds=settings.capture_poll_interval_seconds,
        batch_size=settings.capture_batch_size,
        wake_on_commit=True,  # the consumer records the fee differences to move
    )


async def move_money(gateway: PaymentGateway, due: DueMovement, *, timeout: float) -> Outcome | None:
    """The gateway's answer for one leased movement, outside any transaction; None when unknown."""
    movement = due.movement
    key = movement["movement_id"]
    lifetime = gateway.key_lifetime
    if lifetime is not None and datetime.now(UTC) - movement["first_attempt_at"] >= lifetime - KEY_LIFETIME_MARGIN:
        log.error(
            "refund or top-up outcome unknown for longer than the processor keeps idempotency keys; not asking"
            " again: look it up at the processor by metadata and settle it by hand",
            movement_id=key,
            kind=movement["kind"],
        )
        return None
    try:
        if movement["kind"] == "refund":
            return await asyncio.wait_for(
                gateway.refund(
                    idempotency_key=key,
                    payment_ref=movement["payment_ref"],
                    amount_minor=movement["amount_minor"],
                    currency=movement["currency"],
                ),
                timeout=timeout,
            )
        card = due.card
        if card is None and gateway.charges_saved_cards:
            return PaymentResult(
                "failed", None, movement["amount_minor"], movement["currency"], failure_reason="no_card_on_file"
            )
        return await asyncio.wait_for(
            gateway.charge(
                idempotency_key=key,
                amount_minor=movement["amount_minor"],
                currency=movement["currency"],
                customer_ref=card["customer_ref"] if card is not None else movement["patient_id"],
                payment_method=card["payment_method_ref"] if card is not None else None,
            ),
            timeout=timeout,
        )
    except (TimeoutError, GatewayUnavailable, OSError) as exc:
        log.warning(
            "refund or top-up outcome unknown; retried with the same key",
            movement_id=key,
            attempt=movement["attempts"],
            error=type(exc).__name__,
        )
    except Exception as exc:  # noqa: BLE001 - needs a person, not a crash
        log.error(
            "refund or top-up refused; it stays pending",
            movement_id=key,
            attempt=movement["attempts"],
            error=type(exc).__name__,
            detail=mask_text(str(exc))[:300],
        )
    return None


async def record_movement(unit: WorkUnit[HasGateway], due: DueMovement, outcome: Outcome) -> None:
    await settle(unit, due.movement["movement_id"], outcome, actor=f"service/{unit.service}")


async def settle(unit: WorkUnit[Any], movement_id: str, outcome: Outcome, *, actor: str) -> bool:
    """Record the answer to one refund or top-up once (from the refund task or a webhook), with
    the charge's new state, the audit and its event; False when it was settled before."""
    # One lock order everywhere: the charge first, then its movement.
    charge_id = await repository.charge_of_movement(unit.conn, movement_id)
    charge = await repository.lock_charge(unit.conn, charge_id) if charge_id is not None else None
    movement = await repository.lock_movement(unit.conn, movement_id)
    if movement is None or charge is None or movement["status"] not in ("pending", "processing"):
        return False
    if isinstance(outcome, RefundResult):
        await _settle_refund(unit, movement, charge, outcome, actor)
    else:
        await _settle_top_up(unit, movement, charge, outcome, actor)
    return True


async def _settle_refund(unit: WorkUnit[Any], movement: Any, charge: Any, result: RefundResult, actor: str) -> None:
    money = domain.from_minor(movement["amount_minor"], movement["currency"])
    if result.status == "pending":
        if movement["status"] == "processing":
            return
        await repository.settle_movement(
            unit.conn, movement["movement_id"], status="processing", gateway_ref=result.reference, failure_reason=None
        )
        await _audit(
            unit,
            movement,
            actor,
            "refund_processing",
            f"{money} {movement['currency']} refund taken by"
            f" {movement['gateway']}, not settled yet (its webhook settles it)",
            result.reference,
        )
        return
    await repository.settle_movement(
        unit.conn,
        movement["movement_id"],
        status=result.status,
        gateway_ref=result.reference,
        failure_reason=result.failure_reason,
    )
    if result.status == "failed":
        log.error(
            "refund failed at the processor: a person must give the money back",
            movement_id=movement["movement_id"],
            charge_id=movement["charge_id"],
            failure_reason=result.failure_reason,
        )
        await _audit(
            unit,
            movement,
            actor,
            "refund_failed",
            f"{money} {movement['currency']} refund refused by"
            f" {movement['gateway']}: {result.failure_reason}; settle it by hand",
            result.reference,
        )
        return
    await _audit(
        unit,
        movement,
        actor,
        "refund_succeeded",
        f"{money} {movement['currency']} given back to the card through {movement['gateway']} ({movement['reason']})",
        result.reference,
    )
    unit.emit(
        BILLING_EVENTS,
        PaymentRefunded.new(
            charge_id=movement["charge_id"],
            booking_id=movement["booking_id"],
            refund_id=movement["movement_id"],
            amount=money,
            currency=movement["currency"],
            reason=movement["reason"],
        ),
        subject=movement["booking_id"],
        time=unit.now,
    )


async def _settle_top_up(unit: WorkUnit[Any], movement: Any, charge: Any, result: PaymentResult, actor: str) -> None:
    money = domain.from_minor(movement["amount_minor"], movement["currency"])
    captured = result.captured
    await repository.settle_movement(
        unit.conn,
        movement["movement_id"],
        status="succeeded" if captured else "failed",
        gateway_ref=result.reference,
        failure_reason=result.failure_reason,
    )
    if charge["status"] == "pending_capture" and charge["paid_minor"] > 0:
        await repository.set_charge_state(
            unit.conn,
            charge["charge_id"],
            status="paid" if captured else "outstanding",
            paid_minor=charge["paid_minor"] + (movement["amount_minor"] if captured else 0),
            failure_reason=result.failure_reason,
        )
    reason = (
        f"{money} {movement['currency']} more charged to the card on file through {movement['gateway']}"
        if captured
        else f"{money} {movement['currency']} more could not be charged to the card ({result.failure_reason});"
        " it stays owed"
    )
    await _audit(unit, movement, actor, "top_up_captured" if captured else "top_up_failed", reason, result.reference)
    fields = {
        "charge_id": movement["charge_id"],
        "booking_id": movement["booking_id"],
        "amount": money,
        "currency": movement["currency"],
    }
    payload = (
        PaymentCaptured.new(**fields) if captured else PaymentFailed.new(**fields, failure_reason=result.failure_reason)
    )
    unit.emit(BILLING_EVENTS, payload, subject=movement["booking_id"], time=unit.now)


async def _audit(unit: WorkUnit[Any], movement: Any, actor: str, action: str, reason: str, ref: str | None) -> None:
    await repository.audit(
        unit.conn,
        at=unit.now,
        actor=actor,
        action=action,
        practice_id=movement["practice_id"],
        booking_id=movement["booking_id"],
        charge_id=movement["charge_id"],
        amount_minor=movement["amount_minor"],
        currency=movement["currency"],
        reason=reason,
        detail={"movement_id": movement["movement_id"], "gateway_ref": ref, "request_id": movement["request_id"]},
    )

"""Stripe's webhooks (`POST /stripe/webhook`): the outcome of a card payment, a top-up or a refund
that billing did not learn when it asked (a timeout, a refund Stripe settles later) is settled
from Stripe's own event.

Guarantees:
- Nothing is believed unless Stripe signed it: the body is checked with the official SDK
  (`stripe.Webhook.construct_event`, the `Stripe-Signature` header, STRIPE_WEBHOOK_SECRET, the
  SDK's 5-minute tolerance). No secret configured, no or a bad signature: 403. A body larger than
  STRIPE_WEBHOOK_MAX_BYTES is refused unread (413); a signed body that is not a Stripe event: 400.
- Each Stripe event has its effect once (`stripe_events`, by Stripe's event id), and each outcome
  is recorded once whichever comes first, the gateway's answer or the webhook: both lock the
  charge and act only on a charge still waiting (`capture.record_payment`, `refunds.settle`).
- What it settles commits with its audit rows (who: `stripe:webhook`, the event id) and events in
  one transaction through the outbox, like a handler's; the relay is woken after the commit.
- `payment_intent.succeeded` / `.payment_failed` / `.canceled` settle a charge waiting for its
  capture or a top-up (found by `metadata[charge_id]`, the idempotency key billing sent);
  `refund.created` / `refund.updated` / `refund.failed` (and `charge.refund.updated`) settle a
  refund (`metadata[refund_id]`). Any other event is recorded as ignored.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from shared import outbox
from shared.background import WorkUnit
from shared.http import BodyTooLarge, View, read_body
from shared.logging import get_logger
from shared.service import Runtime, runtime_of

from . import capture, refunds, repository
from .gateway import intent_result, refund_result
from .settings import BillingSettings

log = get_logger(__name__)
router = APIRouter(tags=["billing"])

EVENT_ID = re.compile(r"evt_[A-Za-z0-9_]{1,250}")
EVENT_TYPE = re.compile(r"[a-z_.]{1,100}")
ACTOR = "stripe:webhook"


# Stripe signs each event in this header; the route checks it (no bearer token: Stripe calls us).
StripeSignature = APIKeyHeader(
    name="Stripe-Signature",
    scheme_name="StripeSignature",
    description="Stripe's signature of the event (checked with the webhook signing secret)",
    auto_error=False,
)


class WebhookRecorded(View):
    recorded: bool  # false: this event was received before
    outcome: str


def _uuid(value: Any) -> str | None:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


@router.post("/stripe/webhook", response_model=WebhookRecorded)
async def stripe_webhook(
    request: Request, stripe_signature: Annotated[str | None, Security(StripeSignature)]
) -> dict[str, Any]:
    """One Stripe event, verified, recorded once, and what it settles."""
    import stripe  # the SDK's signature check; loaded where the route is used

    service = runtime_of(request)
    settings = cast(BillingSettings, service.settings)
    secret = settings.stripe_webhook_secret
    if secret is None or not stripe_signature:
        raise HTTPException(403, "not signed by Stripe for this service")
    try:
        body = await read_body(request, settings.stripe_webhook_max_bytes)
    except BodyTooLarge:
        raise HTTPException(413, "a Stripe event is never this large") from None
    try:
        event = stripe.Webhook.construct_event(body, stripe_signature, secret.get_secret_value())
    except stripe.SignatureVerificationError:
        raise HTTPException(403, "not signed by Stripe for this service") from None
    except ValueError:  # signed, but not JSON (or not UTF-8)
        raise HTTPException(400, "not a Stripe event") from None
    data = event.to_dict() if hasattr(event, "to_dict") else dict(event)
    event_id, event_type = data.get("id"), data.get("type")
    obj = (data.get("data") or {}).get("object")
    if (
        not isinstance(event_id, str)
        or not EVENT_ID.fullmatch(event_id)
        or not isinstance(event_type, str)
        or not EVENT_TYPE.fullmatch(event_type)
        or not isinstance(obj, dict)
    ):
        raise HTTPException(400, "not a Stripe event")
    object_id = obj.get("id") if isinstance(obj.get("id"), str) else None
    return await _record(service, event_id, event_type, object_id[:255] if object_id else None, obj)


async def _record(
    service: Runtime, event_id: str, event_type: str, object_id: str | None, obj: dict[str, Any]
) -> dict[str, Any]:
    async with service.pool.acquire() as conn, conn.transaction():
        if not await repository.record_stripe_event(conn, event_id, event_type, object_id, "received"):
            return {"recorded": False, "outcome": "already_received"}
        unit = WorkUnit(conn=conn, service=service.name, deps=service.deps, correlation_id=None, now=datetime.now(UTC))
        outcome, charge = await _settle(unit, event_type, obj)
        await repository.set_stripe_event_outcome(conn, event_id, outcome)
        if charge is not None:
            await repository.audit(
                conn,
                at=unit.now,
                actor=ACTOR,
                action="stripe_webhook",
                practice_id=charge["practice_id"],
                booking_id=charge["booking_id"],
                charge_id=charge["charge_id"],
                reason=f"Stripe's {event_type} ({event_id}): {outcome.replace('_', ' ')}",
                detail={"event_id": event_id, "type": event_type, "object_id": object_id, "outcome": outcome},
            )
        await outbox.write(conn, unit.emitted)
    if unit.emitted:
        service.wake_relay()
    log.info("stripe webhook", event_id=event_id, type=event_type, outcome=outcome)
    return {"recorded": True, "outcome": outcome}


async def _settle(unit: WorkUnit[Any], event_type: str, obj: dict[str, Any]) -> tuple[str, Any]:
    """What the event settles: (outcome, the charge it was about or None)."""
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    if event_type.startswith("payment_intent."):
        key = _uuid(metadata.get("charge_id"))
        if key is None:
            return "not_ours", None
        charge = await repository.lock_charge(unit.conn, key)
        movement_charge = None if charge is not None else await repository.charge_of_movement(unit.conn, key)
        about = (
            charge
            if charge is not None
            else (await repository.lock_charge(unit.conn, movement_charge) if movement_charge else None)
        )
        if about is None:
            return "unknown_payment", None
        result = intent_result(obj, _amount(charge, about, key), about["currency"])
        if result is None:
            return "not_settled_yet", about
        if charge is not None:
            done = await capture.record_payment(unit, capture.DueCharge(charge, None), result, actor=ACTOR)
        else:
            done = await refunds.settle(unit, key, result, actor=ACTOR)
        return (f"payment_{result.status}" if done else "settled_before"), about
    if event_type.startswith("refund.") or event_type == "charge.refund.updated":
        key = _uuid(metadata.get("refund_id"))
        charge_id = await repository.charge_of_movement(unit.conn, key) if key is not None else None
        if key is None or charge_id is None:
            return "unknown_refund", None
        about = await repository.lock_charge(unit.conn, charge_id)
        result = refund_result(obj)
        done = await refunds.settle(unit, key, result, actor=ACTOR)
        return (f"refund_{result.status}" if done else "settled_before"), about
    return "ignored", None


def _amount(charge: Any, about: Any, key: str) -> int:
    # The charge's own amount for a capture; a top-up's amount is its movement's (recorded there).
    return int(charge["amount_minor"]) if charge is not None else int(about["amount_minor"])

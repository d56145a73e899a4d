"""The billing service: charges, card payments through the payment-gateway port, deposits and
credit notes, with an append-only audit of every movement of money.

Consumes `booking.events.v1` (booking.cancelled, booking.no_show_recorded),
`billing.commands.v1` (charge.adjustment_requested, charge.review_decided) and
`upstream.patients.v1` (patient.card_registered, patient.card_removed); publishes
`billing.events.v1` (charge.created, payment.captured, payment.failed, payment.refunded,
deposit.refunded, deposit.kept, credit_note.issued, charge.adjusted, charge.adjustment_rejected,
charge.waived, charge.review_rejected), keyed by booking_id. The capture task (capture.py) charges
cards and the refund task (refunds.py) gives back or takes the difference of a changed fee, both
outside the consumer's transactions; the review task (review.py) approves fees whose review
window ended; Stripe's webhooks (webhooks.py) settle what was not known when asked. An adjustment command that
breaks the contract's bounds is dead-lettered and, when it names a valid charge and request id,
answered with `charge.adjustment_rejected` (`invalid_request`), keyed by the charge id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter

from shared.contracts.base import Payload
from shared.contracts.billing import (
    ChargeAdjusted,
    ChargeAdjustmentRejected,
    ChargeCreated,
    ChargeReviewRejected,
    ChargeWaived,
    CreditNoteIssued,
    DepositKept,
    DepositRefunded,
    PaymentCaptured,
    PaymentFailed,
    PaymentRefunded,
    TurnawayPayOwed,
)
from shared.contracts.common import valid_id
from shared.service import ServiceDefinition
from shared.topics import BILLING_COMMANDS, BILLING_EVENTS, BOOKING_EVENTS, UPSTREAM_PATIENTS

from . import api, capture, gateway, handlers, refunds, repository, review, turnaway, webhooks
from .settings import BillingSettings


def reject_unreadable_adjustment(data: dict[str, Any], error: str, subject: str) -> list[tuple[str, Payload, str]]:
    """`charge.adjustment_rejected` (invalid_request) for an adjustment command that breaks the
    contract, besides its dead letter; keyed by the charge id, as for a charge billing does not
    know. No valid charge and request id to answer to: the dead letter only."""
    charge_id, request_id = valid_id(data.get("charge_id")), valid_id(data.get("request_id"))
    if charge_id is None or request_id is None:
        return []
    rejection = ChargeAdjustmentRejected.new(charge_id=charge_id, request_id=request_id, reason="invalid_request")
    return [(BILLING_EVENTS, rejection, charge_id)]


def definition(settings: BillingSettings | None = None) -> ServiceDefinition:
    settings = settings or BillingSettings()
    api_key = settings.stripe_api_key.get_secret_value() if settings.stripe_api_key else None
    # Refuse an unusable gateway now, before anything starts, with a sentence saying why.
    gateway.require_supported(settings.payment_gateway, stripe_api_key=api_key)

    async def make_deps() -> handlers.BillingDeps:
        return handlers.BillingDeps(
            gateway=gateway.make_gateway(
                settings.payment_gateway,
                sandbox_declines=settings.sandbox_declines,
                stripe_api_key=api_key,
                stripe_api_base=settings.stripe_api_base,
                timeout=settings.gateway_timeout_seconds,
            ),
            repository=repository,
        )

    async def close_deps(deps: handlers.BillingDeps) -> None:
        await deps.gateway.close()

    routes = APIRouter()
    routes.include_router(api.router)
    routes.include_router(webhooks.router)
    routes.include_router(turnaway.router)

    return ServiceDefinition(
        name=settings.service_name,
        description="Charges for late cancellations and no-shows, card payments, deposits and credit notes, audited.",
        settings=settings,
        migrations=Path(__file__).parent.parent / "migrations",
        consumes={
            BOOKING_EVENTS: {
                # the patient's fee and deposit, then (second release) the office's turn-away pay
                "booking.cancelled": turnaway.on_cancelled,
                "booking.no_show_recorded": handlers.bill_no_show,
            },
            BILLING_COMMANDS: {
                "charge.adjustment_requested": handlers.adjust_charge,
                "charge.review_decided": handlers.decide_review,
            },
            UPSTREAM_PATIENTS: {
                "patient.card_registered": handlers.register_card,
                "patient.card_removed": handlers.remove_card,
            },
        },
        publishes={
            BILLING_EVENTS: [
                ChargeCreated,
                PaymentCaptured,
                PaymentFailed,
                DepositRefunded,
                DepositKept,
                CreditNoteIssued,
                ChargeAdjusted,
                ChargeAdjustmentRejected,
                ChargeWaived,
                ChargeReviewRejected,
                PaymentRefunded,
                TurnawayPayOwed,
            ],
        },
        make_deps=make_deps,
        close_deps=close_deps,
        background=[
            capture.card_capture(settings, saved_cards=gateway.charges_saved_cards(settings.payment_gateway)),
            refunds.fee_movements(settings, gateway_name=settings.payment_gateway or "sandbox"),
            review.review_expiry(settings),
        ],
        http_routes=routes,
        answer_invalid={"charge.adjustment_requested": reject_unreadable_adjustment},
    )

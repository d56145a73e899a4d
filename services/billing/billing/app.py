"""The billing service: charges, card payments through the payment-gateway port, deposits and
credit notes, with an append-only audit of every movement of money.

Consumes `booking.events.v1` (booking.cancelled, booking.no_show_recorded) and
`billing.commands.v1` (charge.adjustment_requested); publishes `billing.events.v1`
(charge.created, payment.captured, payment.failed, deposit.refunded, deposit.kept,
credit_note.issued, charge.adjusted, charge.adjustment_rejected), keyed by booking_id. The capture
task (capture.py) charges cards outside the consumer's transactions. An adjustment command that
breaks the contract's bounds is dead-lettered and, when it names a valid charge and request id,
answered with `charge.adjustment_rejected` (`invalid_request`), keyed by the charge id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.contracts.base import Payload
from shared.contracts.billing import (
    ChargeAdjusted,
    ChargeAdjustmentRejected,
    ChargeCreated,
    CreditNoteIssued,
    DepositKept,
    DepositRefunded,
    PaymentCaptured,
    PaymentFailed,
)
from shared.contracts.common import valid_id
from shared.http import page_args, required
from shared.service import Runtime, ServiceDefinition
from shared.topics import BILLING_COMMANDS, BILLING_EVENTS, BOOKING_EVENTS

from . import capture, domain, gateway, handlers, repository
from .settings import BillingSettings


def _money(row: Any, *, minor: str = "amount_minor") -> str:
    return str(domain.from_minor(row[minor], row["currency"]))


def _charge(row: Any) -> dict[str, Any]:
    body = {
        k: row[k]
        for k in row.keys()
        if k not in ("amount_minor", "correlation_id", "capture_attempts", "first_capture_at")
    }
    return {**body, "amount": _money(row)}


def _with_amount(row: Any) -> dict[str, Any]:
    """A payment or deposit row with its minor units shown as a decimal string."""
    return {**{k: row[k] for k in row.keys() if k != "amount_minor"}, "amount": _money(row)}


def _terms(text: str | None) -> dict[str, Any] | None:
    """A stored {amount_minor, currency, code, code_system} as the API shows money."""
    if text is None:
        return None
    terms = json.loads(text)
    minor = terms.pop("amount_minor")
    return {"amount": str(domain.from_minor(minor, terms["currency"])), **terms}


def reject_unreadable_adjustment(data: dict[str, Any], error: str, subject: str) -> list[tuple[str, Payload, str]]:
    """`charge.adjustment_rejected` (invalid_request) for an adjustment command that breaks the
    contract, besides its dead letter; keyed by the charge id, as for a charge billing does not
    know. No valid charge and request id to answer to: the dead letter only."""
    charge_id, request_id = valid_id(data.get("charge_id")), valid_id(data.get("request_id"))
    if charge_id is None or request_id is None:
        return []
    rejection = ChargeAdjustmentRejected.new(charge_id=charge_id, request_id=request_id, reason="invalid_request")
    return [(BILLING_EVENTS, rejection, charge_id)]


def _routes(service: Runtime) -> list[tuple[str, Any]]:
    async def patient_charges(query: dict[str, str]) -> dict[str, Any]:
        """A patient's charges, oldest first, paginated, and the card payments made for them: `?patient_id=`."""
        required(query, "patient_id")
        limit, offset = page_args(query)
        rows = await repository.charges_of_patient(service.pool, query["patient_id"], limit=limit, offset=offset)
        charge_ids = {r["charge_id"] for r in rows}
        payments = [
            _with_amount(p)
            for p in await repository.payments_of_patient(service.pool, query["patient_id"])
            if p["charge_id"] in charge_ids
        ]
        return {
            "patient_id": query["patient_id"],
            "charges": [_charge(r) for r in rows],
            "payments": payments,
            "page_size": limit,
            "offset": offset,
        }

    async def booking_billing(query: dict[str, str]) -> dict[str, Any]:
        """Everything billing did for one booking: charges (fee and code), payments, deposit outcomes,
        adjustments and the audit: `?booking_id=`."""
        required(query, "booking_id")
        booking_id = query["booking_id"]
        charges = await repository.charges_of_booking(service.pool, booking_id)
        payments = await repository.payments_of_booking(service.pool, booking_id)
        deposits = await repository.deposits_of_booking(service.pool, booking_id)
        adjustments = await repository.adjustments_of_booking(service.pool, booking_id)
        audit = await repository.audit_of_booking(service.pool, booking_id)
        return {
            "booking_id": booking_id,
            "charges": [_charge(r) for r in charges],
            "payments": [_with_amount(r) for r in payments],
            "deposits": [_with_amount(r) for r in deposits],
            "adjustments": [
                {
                    **{k: r[k] for k in r.keys() if k not in ("before", "after")},
                    "before": _terms(r["before"]),
                    "after": _terms(r["after"]),
                }
                for r in adjustments
            ],
            "audit": [
                {
                    **{k: r[k] for k in r.keys() if k not in ("amount_minor", "detail")},
                    "amount": _money(r) if r["amount_minor"] is not None else None,
                    "detail": json.loads(r["detail"]),
                }
                for r in audit
            ],
        }

    async def practice_balances(query: dict[str, str]) -> dict[str, Any]:
        """What patients owe one practice, per currency: `?practice_id=`."""
        required(query, "practice_id")
        rows = await repository.balances_of_practice(service.pool, query["practice_id"])
        return {
            "practice_id": query["practice_id"],
            "balances": [
                {
                    "currency": r["currency"],
                    "outstanding": _money(r, minor="outstanding_minor"),
                    "pending_capture": _money(r, minor="pending_capture_minor"),
                    "charges": r["charges"],
                }
                for r in rows
            ],
        }

    return [
        ("/charges", patient_charges),
        ("/booking-billing", booking_billing),
        ("/balances", practice_balances),
    ]


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

    return ServiceDefinition(
        name=settings.service_name,
        description="Charges for late cancellations and no-shows, card payments, deposits and credit notes, audited.",
        settings=settings,
        migrations=Path(__file__).parent.parent / "migrations",
        consumes={
            BOOKING_EVENTS: {
                "booking.cancelled": handlers.bill_cancellation,
                "booking.no_show_recorded": handlers.bill_no_show,
            },
            BILLING_COMMANDS: {
                "charge.adjustment_requested": handlers.adjust_charge,
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
            ],
        },
        make_deps=make_deps,
        close_deps=close_deps,
        background=[capture.card_capture(settings, saved_cards=gateway.charges_saved_cards(settings.payment_gateway))],
        http_routes=_routes,
        answer_invalid={"charge.adjustment_requested": reject_unreadable_adjustment},
    )

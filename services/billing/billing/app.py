"""The billing service: charges, card payments through the payment-gateway port, deposits and
credit notes, with an append-only audit of every movement of money.

Consumes `booking.events.v1` (booking.cancelled, booking.no_show_recorded); publishes
`billing.events.v1` (charge.created, payment.captured, payment.failed, deposit.refunded,
deposit.kept, credit_note.issued), keyed by booking_id. The capture task (capture.py) charges
cards outside the consumer's transactions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.contracts.billing import (
    ChargeCreated,
    CreditNoteIssued,
    DepositKept,
    DepositRefunded,
    PaymentCaptured,
    PaymentFailed,
)
from shared.http import BadRequest, json_route, page_args
from shared.service import Service, ServiceDefinition
from shared.topics import BILLING_EVENTS, BOOKING_EVENTS

from . import capture, domain, gateway, handlers, repository
from .settings import BillingSettings


@dataclass(frozen=True)
class BillingDeps:
    gateway: gateway.PaymentGateway


def _money(row: Any, *, minor: str = "amount_minor") -> str:
    return str(domain.from_minor(row[minor], row["currency"]))


def _charge(row: Any) -> dict[str, Any]:
    body = {k: row[k] for k in row.keys() if k not in ("amount_minor", "correlation_id", "capture_attempts")}
    return {**body, "amount": _money(row)}


def _routes(service: Service) -> list[tuple[str, Any]]:
    async def patient_charges(query: dict[str, str]) -> dict[str, Any]:
        """A patient's charges, oldest first, paginated: `?patient_id=`."""
        if not query.get("patient_id"):
            raise BadRequest("patient_id is required")
        limit, offset = page_args(query)
        rows = await repository.charges_of_patient(service.pool, query["patient_id"], limit=limit, offset=offset)
        return {"patient_id": query["patient_id"], "charges": [_charge(r) for r in rows], "page_size": limit, "offset": offset}

    async def booking_billing(query: dict[str, str]) -> dict[str, Any]:
        """Everything billing did for one booking: charges, payments, deposits, audit: `?booking_id=`."""
        if not query.get("booking_id"):
            raise BadRequest("booking_id is required")
        booking_id = query["booking_id"]
        charges = await repository.charges_of_booking(service.pool, booking_id)
        payments = await repository.payments_of_booking(service.pool, booking_id)
        deposits = await repository.deposits_of_booking(service.pool, booking_id)
        audit = await repository.audit_of_booking(service.pool, booking_id)
        return {
            "booking_id": booking_id,
            "charges": [_charge(r) for r in charges],
            "payments": [{**{k: r[k] for k in r.keys() if k != "amount_minor"}, "amount": _money(r)} for r in payments],
            "deposits": [{**{k: r[k] for k in r.keys() if k != "amount_minor"}, "amount": _money(r)} for r in deposits],
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
        if not query.get("practice_id"):
            raise BadRequest("practice_id is required")
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
        ("/charges", json_route(patient_charges)),
        ("/booking-billing", json_route(booking_billing)),
        ("/balances", json_route(practice_balances)),
    ]


def definition(settings: BillingSettings | None = None) -> ServiceDefinition:
    settings = settings or BillingSettings()
    # Refuse an unusable gateway now, before anything starts, with a sentence saying why.
    gateway.require_supported(settings.payment_gateway)

    async def make_deps(service: Service) -> BillingDeps:
        return BillingDeps(gateway=gateway.make_gateway(settings.payment_gateway, sandbox_declines=settings.sandbox_declines))

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
        },
        # charge.adjusted / charge.adjustment_rejected come with role-checked adjustments
        # (billing.commands.v1), a later issue: not consumed or published yet.
        publishes={
            BILLING_EVENTS: [
                ChargeCreated,
                PaymentCaptured,
                PaymentFailed,
                DepositRefunded,
                DepositKept,
                CreditNoteIssued,
            ],
        },
        make_deps=make_deps,
        background=[capture.capture_payments],
        http_routes=_routes,
    )

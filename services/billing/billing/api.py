"""billing's read API: a patient's charges, one booking's billing, what a practice is owed.

Every route needs a bearer token (shared.auth) with a role that reads money (`FEE_ROLES`: 403
otherwise) and shows only the token's practices (`ops`: every practice): a patient's charges at
another practice are left out, and another practice's booking or balances answer 404 like ones
that do not exist. Amounts are decimal strings in their currency's own units, never floats.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from shared.auth import FEE_ROLES, Principal, with_role
from shared.http import Page, PathId, QueryId, View, not_found
from shared.service import Runtime, runtime_of

from . import domain, repository

router = APIRouter(tags=["billing"])


class Charge(View):
    charge_id: str
    booking_id: str
    request_id: str
    practice_id: str
    patient_id: str
    kind: str
    amount: Decimal
    currency: str
    code: str
    code_system: str
    charge_card: bool
    status: str
    failure_reason: str | None
    policy_version: str
    occurred_at: datetime
    created_at: datetime
    updated_at: datetime
    review_until: datetime | None = None  # while pending_review
    paid: Decimal  # taken and not given back; what is owed is amount - paid


class Payment(View):
    payment_id: str
    charge_id: str
    booking_id: str
    status: str
    amount: Decimal
    currency: str
    gateway: str
    gateway_ref: str | None
    failure_reason: str | None
    recorded_at: datetime


class Deposit(View):
    booking_id: str
    request_id: str
    practice_id: str
    patient_id: str
    outcome: str
    amount: Decimal
    currency: str
    credit_note_id: str | None
    occurred_at: datetime
    recorded_at: datetime


class Terms(View):
    amount: Decimal
    currency: str
    code: str
    code_system: str


class Adjustment(View):
    request_id: str
    charge_id: str
    actor: str
    actor_roles: list[str]
    outcome: str
    reason: str | None
    before: Terms | None
    after: Terms | None
    requested_at: datetime
    recorded_at: datetime


class Movement(View):
    """Money moved after the fee was first taken: a refund, or a top-up to the card."""

    movement_id: str
    charge_id: str
    request_id: str
    kind: str
    reason: str
    amount: Decimal
    currency: str
    gateway: str
    status: str
    gateway_ref: str | None
    failure_reason: str | None
    actor: str
    created_at: datetime
    settled_at: datetime | None


class Review(View):
    request_id: str
    charge_id: str
    actor: str
    actor_roles: list[str]
    decision: str
    outcome: str
    reason: str | None
    before: Terms | None
    after: Terms | None
    note: str | None
    requested_at: datetime
    recorded_at: datetime


class AuditEntry(View):
    seq: int
    at: datetime
    actor: str
    action: str
    charge_id: str | None
    amount: Decimal | None
    currency: str | None
    reason: str
    detail: dict[str, Any]
    recorded_at: datetime


class PatientCharges(View):
    patient_id: str
    charges: list[Charge]
    payments: list[Payment]
    page: int
    page_size: int


class BookingBilling(View):
    booking_id: str
    charges: list[Charge]
    payments: list[Payment]
    deposits: list[Deposit]
    adjustments: list[Adjustment]
    reviews: list[Review]
    movements: list[Movement]
    audit: list[AuditEntry]


class Balance(View):
    currency: str
    outstanding: Decimal
    pending_capture: Decimal
    pending_review: Decimal  # fees waiting for staff: not owed yet
    charges: int


class ReviewQueue(View):
    charges: list[Charge]
    page: int
    page_size: int


class PracticeBalances(View):
    practice_id: str
    balances: list[Balance]


Caller = Annotated[Principal, Depends(with_role(FEE_ROLES))]
Service = Annotated[Runtime, Depends(runtime_of)]


@router.get("/patients/{patient_id}/charges", response_model=PatientCharges)
async def patient_charges(
    patient_id: PathId,
    caller: Caller,
    service: Service,
    page: Annotated[Page, Depends()],
    practice_id: QueryId = None,
) -> dict[str, Any]:
    """A patient's charges at the caller's practices (or at one of them), oldest first,
    paginated, with the card payments made for the charges on the page."""
    practice_ids = caller.practices(practice_id)
    rows = await repository.charges_of_patient(
        service.pool, patient_id, practice_ids=practice_ids, limit=page.limit, offset=page.offset
    )
    payments = await repository.payments_of_charges(
        service.pool, [r["charge_id"] for r in rows], practice_ids=practice_ids
    )
    return {
        "patient_id": patient_id,
        "charges": [_charge(r) for r in rows],
        "payments": [_with_amount(p) for p in payments],
        "page": page.page,
        "page_size": page.page_size,
    }


@router.get("/bookings/{booking_id}/billing", response_model=BookingBilling)
async def booking_billing(booking_id: PathId, caller: Caller, service: Service) -> dict[str, Any]:
    """Everything billing did for one booking: charges (fee and code), payments, deposit
    outcomes, adjustments and the audit. 404 when billing has nothing for it the caller may see."""
    pool, practice_ids = service.pool, caller.practices()
    charges = await repository.charges_of_booking(pool, booking_id, practice_ids=practice_ids)
    deposits = await repository.deposits_of_booking(pool, booking_id, practice_ids=practice_ids)
    if not charges and not deposits:  # every other row of a booking comes with one of these
        raise not_found("booking")
    payments = await repository.payments_of_booking(pool, booking_id, practice_ids=practice_ids)
    adjustments = await repository.adjustments_of_booking(pool, booking_id, practice_ids=practice_ids)
    reviews = await repository.reviews_of_booking(pool, booking_id, practice_ids=practice_ids)
    movements = await repository.movements_of_booking(pool, booking_id, practice_ids=practice_ids)
    audit = await repository.audit_of_booking(pool, booking_id, practice_ids=practice_ids)
    return {
        "booking_id": booking_id,
        "charges": [_charge(r) for r in charges],
        "reviews": [{**dict(r), "before": _terms(r["before"]), "after": _terms(r["after"])} for r in reviews],
        "movements": [_with_amount(r) for r in movements],
        "payments": [_with_amount(r) for r in payments],
        "deposits": [_with_amount(r) for r in deposits],
        "adjustments": [{**dict(r), "before": _terms(r["before"]), "after": _terms(r["after"])} for r in adjustments],
        "audit": [
            {
                **dict(r),
                "amount": _money(r["amount_minor"], r["currency"]) if r["amount_minor"] is not None else None,
                "detail": json.loads(r["detail"]),
            }
            for r in audit
        ],
    }


@router.get("/practices/{practice_id}/balances", response_model=PracticeBalances)
async def practice_balances(practice_id: PathId, caller: Caller, service: Service) -> dict[str, Any]:
    """What patients owe one practice, per currency: outstanding, waiting for card capture, and
    the number of charges owed."""
    caller.practices(practice_id)  # 404 unless the token covers it
    rows = await repository.balances_of_practice(service.pool, practice_id)
    return {
        "practice_id": practice_id,
        "balances": [
            {
                "currency": r["currency"],
                "outstanding": _money(r["outstanding_minor"], r["currency"]),
                "pending_capture": _money(r["pending_capture_minor"], r["currency"]),
                "pending_review": _money(r["pending_review_minor"], r["currency"]),
                "charges": r["charges"],
            }
            for r in rows
        ],
    }


@router.get("/charges/in-review", response_model=ReviewQueue)
async def review_queue(
    caller: Caller, service: Service, page: Annotated[Page, Depends()], practice_id: QueryId = None
) -> dict[str, Any]:
    """Fees waiting for staff to approve, edit or waive them (`charge.review_decided`) at the
    caller's practices, the soonest end of its review window first."""
    rows = await repository.charges_in_review(
        service.pool, practice_ids=caller.practices(practice_id), limit=page.limit, offset=page.offset
    )
    return {"charges": [_charge(r) for r in rows], "page": page.page, "page_size": page.page_size}


def _charge(row: Any) -> dict[str, Any]:
    return {**_with_amount(row), "paid": _money(row["paid_minor"], row["currency"])}


def _money(minor: int, currency: str) -> Decimal:
    return domain.from_minor(minor, currency)


def _with_amount(row: Any) -> dict[str, Any]:
    """A charge, payment or deposit row with its minor units as an amount in its currency."""
    return {**dict(row), "amount": _money(row["amount_minor"], row["currency"])}


def _terms(text: str | None) -> dict[str, Any] | None:
    """Stored {amount_minor, currency, code, code_system} as the API shows money."""
    if text is None:
        return None
    terms = json.loads(text)
    return {**terms, "amount": _money(terms["amount_minor"], terms["currency"])}

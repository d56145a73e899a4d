"""Second release (issue 17): turn-away pay.

Guarantees: when staff cancel a booking with a booked professional inside the office's late
window, the policy's decision carries `turnaway_pay` (the practice's `percent_of_shift` of the
booking's price); billing records it once per booking (the booking id is the row's key, so a
replay or a resend finds it) with who and when in the audit, and publishes `turnaway_pay.owed`
once. Billing takes no money for it: it is what the office owes the professional, for the
marketplace to settle. The read routes show it to the practice's fee roles.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from shared.auth import FEE_ROLES, Principal, with_role
from shared.consumer import Unit
from shared.contracts.billing import TurnawayPayOwed
from shared.contracts.booking import BookingCancelled
from shared.contracts.common import UtcDatetime
from shared.http import PathId, QueryId, View, not_found
from shared.service import Runtime, runtime_of
from shared.topics import BILLING_EVENTS

from . import domain, handlers, repository
from .handlers import BillingDeps


async def on_cancelled(unit: Unit[BillingDeps], event: BookingCancelled) -> None:
    """The patient's fee and deposit (handlers.bill_cancellation), then the office's turn-away pay."""
    await handlers.bill_cancellation(unit, event)
    await owe_turnaway_pay(unit, event)


async def owe_turnaway_pay(unit: Unit[BillingDeps], event: BookingCancelled) -> None:
    pay = event.decision.turnaway_pay
    if pay is None or event.actor.kind != "staff" or event.professional_id is None:
        return
    repo = unit.deps.repository
    await repo.lock_booking_billing(unit.conn, event.booking_id)
    amount_minor = domain.to_minor(pay.amount, pay.currency)
    recorded = await repo.record_turnaway_pay(
        unit.conn,
        {
            "booking_id": event.booking_id,
            "practice_id": event.practice_id,
            "professional_id": event.professional_id,
            "amount_minor": amount_minor,
            "currency": pay.currency,
            "owed_at": event.cancelled_at,
            "request_id": event.request_id,
            "event_id": unit.event.id,
        },
    )
    if not recorded:
        return  # owed once per booking
    await repo.audit(
        unit.conn,
        at=event.cancelled_at,
        actor=f"{event.actor.kind}:{event.actor.id}",
        action="turnaway_pay_owed",
        practice_id=event.practice_id,
        booking_id=event.booking_id,
        reason="staff cancelled the booked professional inside the office's late window",
        amount_minor=amount_minor,
        currency=pay.currency,
        detail={"professional_id": event.professional_id, "policy_version": event.decision.policy_version},
    )
    unit.emit(
        BILLING_EVENTS,
        TurnawayPayOwed.new(
            booking_id=event.booking_id,
            practice_id=event.practice_id,
            professional_id=event.professional_id,
            amount=pay.amount,
            currency=pay.currency,
        ),
        subject=event.booking_id,
    )


# --- read API -------------------------------------------------------------------------------------

router = APIRouter(tags=["billing"])
Caller = Annotated[Principal, Depends(with_role(FEE_ROLES))]
Service = Annotated[Runtime, Depends(runtime_of)]
MAX_PERIOD_DAYS = 400
From = Annotated[UtcDatetime, Query(alias="from", description="period start (the cancellation's time)")]
To = Annotated[UtcDatetime, Query(alias="to", description="period end, exclusive")]


class Owed(View):
    booking_id: str
    professional_id: str
    amount: Decimal
    currency: str
    owed_at: datetime


class PracticeTurnaway(View):
    practice_id: str
    items: list[Owed]  # oldest first, at most 1,000


class TurnawayTotal(View):
    practice_id: str
    currency: str
    bookings: int
    amount: Decimal


def _period(owed_from: datetime, owed_before: datetime) -> None:
    if not timedelta(0) < owed_before - owed_from <= timedelta(days=MAX_PERIOD_DAYS):
        raise HTTPException(422, f"`to` must be after `from`, and the period at most {MAX_PERIOD_DAYS} days")


@router.get("/practices/{practice_id}/turnaway-pay", response_model=PracticeTurnaway)
async def practice_turnaway_pay(
    practice_id: PathId, caller: Caller, service: Service, owed_from: From, owed_before: To
) -> dict[str, Any]:
    """What the office owes its booked professionals for late cancellations in the period."""
    if not caller.can_read(practice_id):
        raise not_found("practice")
    _period(owed_from, owed_before)
    rows = await repository.turnaway_pay_of_practice(
        service.pool, practice_id, owed_from=owed_from, owed_before=owed_before
    )
    items = [{**dict(r), "amount": domain.from_minor(r["amount_minor"], r["currency"])} for r in rows]
    return {"practice_id": practice_id, "items": items}


@router.get("/reports/turnaway-pay", response_model=list[TurnawayTotal])
async def turnaway_pay_report(
    caller: Caller, service: Service, owed_from: From, owed_before: To, practice_id: QueryId = None
) -> list[dict[str, Any]]:
    """Turn-away pay owed in the period per practice and currency, for the token's practices."""
    _period(owed_from, owed_before)
    rows = await repository.turnaway_pay_totals(
        service.pool, caller.practices(practice_id), owed_from=owed_from, owed_before=owed_before
    )
    return [
        {
            "practice_id": r["practice_id"],
            "currency": r["currency"],
            "bookings": r["bookings"],
            "amount": domain.from_minor(r["amount_minor"], r["currency"]),
        }
        for r in rows
    ]

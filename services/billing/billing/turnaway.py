"""Second release (issue 17): turn-away pay.

Guarantees: when staff cancel a booking with a booked professional inside the office's late
window, the policy's decision carries `turnaway_pay` (the practice's `percent_of_shift` of the
booking's price); billing records it once per booking (the booking id is the row's key, so a
replay or a resend finds it) with who and when in the audit, and publishes `turnaway_pay.owed`
once. Billing takes no money for it: it is what the office owes the professional, for the
marketplace to settle. The read routes show it to the practice's fee roles.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from shared.auth import FEE_ROLES, Principal, with_role
from shared.consumer import SetBased, Unit
from shared.contracts.billing import TurnawayPayOwed
from shared.contracts.booking import BookingCancelled
from shared.contracts.common import UtcDatetime
from shared.http import PathId, QueryId, View, not_found
from shared.service import Runtime, runtime_of
from shared.topics import BILLING_EVENTS

from . import domain, handlers, repository
from .handlers import BillingDeps


async def on_cancelled_many(units: Sequence[Unit[BillingDeps]], events: Sequence[BookingCancelled]) -> None:
    """Cancellations, set-based: each one's patient fee and deposit (`handlers.bill_many`), then
    the office's turn-away pay; the set's bookings locked in one statement, each kind of row
    written in one, the audit in one."""
    conn, repo = units[0].conn, units[0].deps.repository
    owed = [_owed(unit, event) for unit, event in zip(units, events, strict=True)]
    bills = [handlers.cancellation_bill(unit, event) for unit, event in zip(units, events, strict=True)]
    audit = await handlers.bill_many(bills, also_lock=[row["booking_id"] for row in owed if row is not None])
    rows = [row for row in owed if row is not None]
    recorded = await repo.record_turnaway_pays(conn, rows) if rows else set()
    for unit, event, row in zip(units, events, owed, strict=True):
        if row is None or row["booking_id"] not in recorded:
            continue  # nothing owed, or owed once per booking already
        recorded.discard(row["booking_id"])  # a second record of the booking in the set finds it owed
        pay = event.decision.turnaway_pay
        assert pay is not None
        audit.append(
            {
                "at": event.cancelled_at,
                "actor": f"{event.actor.kind}:{event.actor.id}",
                "action": "turnaway_pay_owed",
                "practice_id": event.practice_id,
                "booking_id": event.booking_id,
                "reason": "staff cancelled the booked professional inside the office's late window",
                "amount_minor": row["amount_minor"],
                "currency": pay.currency,
                "detail": {"professional_id": event.professional_id, "policy_version": event.decision.policy_version},
            }
        )
        unit.emit(
            BILLING_EVENTS,
            TurnawayPayOwed.new(
                booking_id=event.booking_id,
                practice_id=event.practice_id,
                professional_id=row["professional_id"],
                amount=pay.amount,
                currency=pay.currency,
            ),
            subject=event.booking_id,
        )
    if audit:
        await repo.audit_many(conn, audit)


# booking.cancelled: the patient's fee and deposit, then the office's turn-away pay.
on_cancelled = SetBased(on_cancelled_many)


def _owed(unit: Unit[BillingDeps], event: BookingCancelled) -> dict[str, Any] | None:
    """The turn-away pay row a cancellation owes, or None: only a staff cancellation of a booked
    professional whose decision carries it."""
    pay = event.decision.turnaway_pay
    if pay is None or event.actor.kind != "staff" or event.professional_id is None:
        return None
    return {
        "booking_id": event.booking_id,
        "practice_id": event.practice_id,
        "professional_id": event.professional_id,
        "amount_minor": domain.to_minor(pay.amount, pay.currency),
        "currency": pay.currency,
        "owed_at": event.cancelled_at,
        "request_id": event.request_id,
        "event_id": unit.event.id,
    }


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

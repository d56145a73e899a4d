"""One async function per message type: load, decide, save, emit.

A handler never calls the payment gateway: a card charge is a side effect outside our database,
so it is recorded here as `pending_capture` and made by the capture task (capture.py) after this
transaction committed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from shared.consumer import Unit
from shared.contracts.base import Money
from shared.contracts.billing import ChargeCreated, CreditNoteIssued, DepositKept, DepositRefunded
from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.common import Decision
from shared.topics import BILLING_EVENTS

from . import domain, repository


async def bill_cancellation(unit: Unit, event: BookingCancelled) -> None:
    await _bill(
        unit,
        "cancellation",
        booking_id=event.booking_id,
        request_id=event.request_id,
        practice_id=event.practice_id,
        patient_id=event.patient_id,
        decision=event.decision,
        deposit=event.deposit,
        at=event.cancelled_at,
        # Who: the person or system that cancelled (ids and roles only, never names).
        actor=f"{event.actor.kind}:{event.actor.id}",
    )


async def bill_no_show(unit: Unit, event: BookingNoShowRecorded) -> None:
    await _bill(
        unit,
        "no_show",
        booking_id=event.booking_id,
        request_id=event.request_id,
        practice_id=event.practice_id,
        patient_id=event.patient_id,
        decision=event.decision,
        deposit=event.deposit,
        at=event.recorded_at,
        # booking.no_show_recorded does not carry the reporter: the producer is who we know.
        actor=unit.event.envelope.source,
    )


def _why(request: str, decision: Decision) -> str:
    """Why money moves: the request, its classification and the policy version that decided."""
    why = f"{request.replace('_', '-')} classified {decision.classification} under policy {decision.policy_version}"
    return f"{why}: {decision.explanation}" if decision.explanation else why


async def _bill(
    unit: Unit,
    request: Literal["cancellation", "no_show"],
    *,
    booking_id: str,
    request_id: str,
    practice_id: str,
    patient_id: str,
    decision: Decision,
    deposit: Money | None,
    at: datetime,
    actor: str,
) -> None:
    charge = domain.plan_charge(request, booking_id, request_id, decision)
    deposit_plan = domain.plan_deposit(booking_id, request_id, decision, deposit)
    if charge is None and deposit_plan is None:
        return
    await repository.lock_booking_billing(unit.conn, booking_id)
    reason = _why(request, decision)
    if charge is not None:
        await _raise_charge(unit, charge, booking_id, request_id, practice_id, patient_id, decision, at, actor, reason)
    if deposit_plan is not None:
        await _settle_deposit(unit, deposit_plan, booking_id, request_id, practice_id, patient_id, at, actor, reason)


async def _raise_charge(
    unit: Unit,
    charge: domain.ChargePlan,
    booking_id: str,
    request_id: str,
    practice_id: str,
    patient_id: str,
    decision: Decision,
    at: datetime,
    actor: str,
    reason: str,
) -> None:
    created = await repository.insert_charge(
        unit.conn,
        {
            "charge_id": charge.charge_id,
            "booking_id": booking_id,
            "request_id": request_id,
            "practice_id": practice_id,
            "patient_id": patient_id,
            "kind": charge.kind,
            "amount_minor": charge.amount_minor,
            "currency": charge.currency,
            "code": charge.code,
            "code_system": charge.code_system,
            "charge_card": charge.status == "pending_capture",
            "status": charge.status,
            "policy_version": decision.policy_version,
            "occurred_at": at,
            "correlation_id": unit.event.correlation_id,
        },
    )
    if not created:
        return  # the same request again (a replay under a new envelope id): charged once already
    await repository.audit(
        unit.conn,
        at=at,
        actor=actor,
        action="charge_created",
        booking_id=booking_id,
        charge_id=charge.charge_id,
        amount_minor=charge.amount_minor,
        currency=charge.currency,
        reason=reason,
        detail={
            "kind": charge.kind,
            "code": charge.code,
            "code_system": charge.code_system,
            "status": charge.status,
            "request_id": request_id,
            "event_id": unit.event.id,
        },
    )
    unit.emit(
        BILLING_EVENTS,
        ChargeCreated.new(
            charge_id=charge.charge_id,
            booking_id=booking_id,
            patient_id=patient_id,
            kind=charge.kind,
            amount=charge.amount,
            currency=charge.currency,
            code=charge.code,
            code_system=charge.code_system,
        ),
        subject=booking_id,
    )


_DEPOSIT_EVENTS = {"refunded": DepositRefunded, "kept": DepositKept, "credit_note": CreditNoteIssued}


async def _settle_deposit(
    unit: Unit,
    plan: domain.DepositPlan,
    booking_id: str,
    request_id: str,
    practice_id: str,
    patient_id: str,
    at: datetime,
    actor: str,
    reason: str,
) -> None:
    recorded = await repository.insert_deposit_outcome(
        unit.conn,
        {
            "booking_id": booking_id,
            "request_id": request_id,
            "practice_id": practice_id,
            "patient_id": patient_id,
            "outcome": plan.outcome,
            "amount_minor": plan.amount_minor,
            "currency": plan.currency,
            "credit_note_id": plan.credit_note_id,
            "occurred_at": at,
        },
    )
    if not recorded:
        return
    action = "credit_note_issued" if plan.outcome == "credit_note" else f"deposit_{plan.outcome}"
    await repository.audit(
        unit.conn,
        at=at,
        actor=actor,
        action=action,
        booking_id=booking_id,
        amount_minor=plan.amount_minor,
        currency=plan.currency,
        reason=reason,
        detail={"request_id": request_id, "credit_note_id": plan.credit_note_id, "event_id": unit.event.id},
    )
    fields = {"booking_id": booking_id, "amount": plan.amount, "currency": plan.currency}
    if plan.credit_note_id is not None:
        fields["credit_note_id"] = plan.credit_note_id
    unit.emit(BILLING_EVENTS, _DEPOSIT_EVENTS[plan.outcome].new(**fields), subject=booking_id)

"""One async function per message type: load, decide, save, emit.

A handler never calls the payment gateway: a card charge is a side effect outside our database,
so it is recorded here as `pending_capture` and made by the capture task (capture.py) after this
transaction committed. Handlers reach the database only through their ports (`BillingDeps`,
the unit's deps), so tests/handlers runs them against fakes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from shared.consumer import Unit
from shared.contracts.base import Money, money_problem
from shared.contracts.billing import (
    ChargeAdjusted,
    ChargeAdjustmentRejected,
    ChargeCreated,
    CreditNoteIssued,
    DepositKept,
    DepositRefunded,
)
from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.common import Decision, Fee
from shared.contracts.upstream import ChargeAdjustmentRequested
from shared.topics import BILLING_EVENTS

from . import domain
from .gateway import PaymentGateway


@dataclass(frozen=True)
class BillingDeps:
    """The ports of the handlers and the capture task, built by `app.definition`'s `make_deps`.
    No clock: handlers decide by the event's own time, so a replay decides the same."""

    gateway: PaymentGateway  # the capture task's (capture.py); a handler never calls it
    # repository.py, or anything with the same functions (tests/handlers: an in-memory fake).
    repository: Any


async def bill_cancellation(unit: Unit[BillingDeps], event: BookingCancelled) -> None:
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


async def bill_no_show(unit: Unit[BillingDeps], event: BookingNoShowRecorded) -> None:
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
    unit: Unit[BillingDeps],
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
    await unit.deps.repository.lock_booking_billing(unit.conn, booking_id)
    reason = _why(request, decision)
    if charge is not None:
        await _raise_charge(unit, charge, booking_id, request_id, practice_id, patient_id, decision, at, actor, reason)
    if deposit_plan is not None:
        await _settle_deposit(unit, deposit_plan, booking_id, request_id, practice_id, patient_id, at, actor, reason)


async def _raise_charge(
    unit: Unit[BillingDeps],
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
    repository = unit.deps.repository
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
        practice_id=practice_id,
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
    unit: Unit[BillingDeps],
    plan: domain.DepositPlan,
    booking_id: str,
    request_id: str,
    practice_id: str,
    patient_id: str,
    at: datetime,
    actor: str,
    reason: str,
) -> None:
    repository = unit.deps.repository
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
        practice_id=practice_id,
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


async def adjust_charge(unit: Unit[BillingDeps], command: ChargeAdjustmentRequested) -> None:
    """Answer `charge.adjustment_requested` with exactly one of `charge.adjusted` or
    `charge.adjustment_rejected`, once per request id, recorded with who and when."""
    repository = unit.deps.repository
    at = unit.event.envelope.time  # the command's own time: a replay decides and records the same
    actor = f"staff:{command.actor.id}"
    charge_key = _canonical_uuid(command.charge_id)  # charge ids are uuids: anything else names no charge
    charge = await repository.lock_charge(unit.conn, charge_key) if charge_key is not None else None
    terms = (
        domain.ChargeTerms(charge["amount_minor"], charge["currency"], charge["code"], charge["code_system"])
        if charge is not None
        else None
    )
    decision = domain.decide_adjustment(
        roles=command.actor.roles,
        charge=terms,
        charge_status=charge["status"] if charge is not None else None,
        amount=command.amount,
        code=command.code,
        code_system=command.code_system,
    )
    if decision.after is not None and money_problem(decision.after.amount, decision.after.currency) is not None:
        # The command's amount is checked against the charge's currency only here (the contract
        # bounds it by the most any currency allows): more than its currency may be is invalid.
        decision = domain.AdjustmentDecision(terms, rejection="invalid_request")
    first_answer = await repository.record_adjustment_request(
        unit.conn,
        request_id=command.request_id,
        charge_id=command.charge_id,
        practice_id=charge["practice_id"] if charge is not None else None,
        booking_id=charge["booking_id"] if charge is not None else None,
        actor=actor,
        actor_roles=list(command.actor.roles),
        outcome="adjusted" if decision.adjusted else "rejected",
        reason=decision.rejection,
        before=terms.as_json() if terms is not None else None,
        after=decision.after.as_json() if decision.after is not None else None,
        requested_at=at,
    )
    if not first_answer:
        return  # the same request again under another envelope id: it was answered once
    if charge is None:
        # Keyed by the booking like every billing event; a charge that does not exist has no
        # booking, so its rejection is keyed by the charge id the command named.
        _emit_rejection(unit, command, decision, subject=command.charge_id)
    elif decision.after is None:
        await repository.audit(
            unit.conn,
            at=at,
            actor=actor,
            action="adjustment_rejected",
            practice_id=charge["practice_id"],
            booking_id=charge["booking_id"],
            charge_id=charge["charge_id"],
            reason=f"adjustment refused: {decision.rejection}",
            detail=_adjustment_detail(command, unit),
        )
        _emit_rejection(unit, command, decision, subject=charge["booking_id"])
    else:
        await _apply_adjustment(unit, command, charge, decision, at=at, actor=actor)


async def _apply_adjustment(
    unit: Unit[BillingDeps],
    command: ChargeAdjustmentRequested,
    charge: Any,
    decision: domain.AdjustmentDecision,
    *,
    at: datetime,
    actor: str,
) -> None:
    repository = unit.deps.repository
    before, after = decision.before, decision.after
    assert before is not None and after is not None
    await repository.adjust_charge(
        unit.conn, charge["charge_id"], amount_minor=after.amount_minor, code=after.code, code_system=after.code_system
    )
    await repository.audit(
        unit.conn,
        at=at,
        actor=actor,
        action="charge_adjusted",
        practice_id=charge["practice_id"],
        booking_id=charge["booking_id"],
        charge_id=charge["charge_id"],
        amount_minor=after.amount_minor,
        currency=after.currency,
        reason=(
            f"adjusted by {actor} ({', '.join(command.actor.roles)}): "
            f"{before.amount} {before.currency} {before.code_system} {before.code} -> "
            f"{after.amount} {after.currency} {after.code_system} {after.code}"
        ),
        detail={**_adjustment_detail(command, unit), "before": before.as_json(), "after": after.as_json()},
    )
    unit.emit(
        BILLING_EVENTS,
        ChargeAdjusted.new(
            charge_id=command.charge_id, request_id=command.request_id, before=_fee(before), after=_fee(after)
        ),
        subject=charge["booking_id"],
    )


def _emit_rejection(
    unit: Unit[BillingDeps], command: ChargeAdjustmentRequested, decision: domain.AdjustmentDecision, *, subject: str
) -> None:
    unit.emit(
        BILLING_EVENTS,
        ChargeAdjustmentRejected.new(
            charge_id=command.charge_id, request_id=command.request_id, reason=decision.rejection
        ),
        subject=subject,
    )


def _canonical_uuid(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _fee(terms: domain.ChargeTerms) -> Fee:
    return Fee.new(amount=terms.amount, currency=terms.currency, code=terms.code, code_system=terms.code_system)


def _adjustment_detail(command: ChargeAdjustmentRequested, unit: Unit[BillingDeps]) -> dict[str, object]:
    return {"request_id": command.request_id, "roles": list(command.actor.roles), "event_id": unit.event.id}

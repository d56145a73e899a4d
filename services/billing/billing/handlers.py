"""One async function per message type: load, decide, save, emit.

A handler never calls the payment gateway: a card charge is a side effect outside our database,
so it is recorded here as `pending_capture` and made by the capture task (capture.py) after this
transaction committed. Handlers reach the database only through their ports (`BillingDeps`,
the unit's deps), so tests/handlers runs them against fakes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from shared.consumer import SetBased, Unit
from shared.contracts.base import money_problem
from shared.contracts.billing import (
    ChargeAdjusted,
    ChargeAdjustmentRejected,
    ChargeCreated,
    ChargeReviewRejected,
    ChargeWaived,
    CreditNoteIssued,
    DepositKept,
    DepositRefunded,
)
from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.common import Decision, Fee
from shared.contracts.envelope import ContractViolation
from shared.contracts.upstream import (
    ChargeAdjustmentRequested,
    ChargeReviewDecided,
    PatientCardRegistered,
    PatientCardRemoved,
)
from shared.logging import get_logger
from shared.topics import BILLING_EVENTS

from . import domain
from .gateway import PaymentGateway

log = get_logger(__name__)


@dataclass(frozen=True)
class BillingDeps:
    """The ports of the handlers and the capture task, built by `app.definition`'s `make_deps`.
    No clock: handlers decide by the event's own time, so a replay decides the same."""

    gateway: PaymentGateway  # the capture task's (capture.py); a handler never calls it
    # repository.py, or anything with the same functions (tests/handlers: an in-memory fake).
    repository: Any


@dataclass(frozen=True)
class Bill:
    """What one cancellation or no-show moves, decided before anything is written: its fee and
    its deposit (either may be None), with who and when for the audit."""

    unit: Unit[BillingDeps]
    request: Literal["cancellation", "no_show"]
    booking_id: str
    request_id: str
    practice_id: str
    patient_id: str
    decision: Decision
    at: datetime
    actor: str
    charge: domain.ChargePlan | None
    deposit: domain.DepositPlan | None

    @property
    def reason(self) -> str:
        """Why money moves: the request, its classification and the policy version that decided."""
        why = (
            f"{self.request.replace('_', '-')} classified {self.decision.classification}"
            f" under policy {self.decision.policy_version}"
        )
        return f"{why}: {self.decision.explanation}" if self.decision.explanation else why


def _bill(
    unit: Unit[BillingDeps],
    request: Literal["cancellation", "no_show"],
    event: BookingCancelled | BookingNoShowRecorded,
    at: datetime,
    actor: str,
) -> Bill:
    return Bill(
        unit=unit,
        request=request,
        booking_id=event.booking_id,
        request_id=event.request_id,
        practice_id=event.practice_id,
        patient_id=event.patient_id,
        decision=event.decision,
        at=at,
        actor=actor,
        charge=domain.plan_charge(request, event.booking_id, event.request_id, event.decision, at),
        deposit=domain.plan_deposit(event.booking_id, event.request_id, event.decision, event.deposit),
    )


def cancellation_bill(unit: Unit[BillingDeps], event: BookingCancelled) -> Bill:
    # Who: the person or system that cancelled (ids and roles only, never names).
    return _bill(unit, "cancellation", event, event.cancelled_at, f"{event.actor.kind}:{event.actor.id}")


def no_show_bill(unit: Unit[BillingDeps], event: BookingNoShowRecorded) -> Bill:
    # booking.no_show_recorded does not carry the reporter: the producer is who we know.
    return _bill(unit, "no_show", event, event.recorded_at, unit.event.envelope.source)


Audit = list[dict[str, Any]]  # audit entries of a set, written at once (repository.audit_many)


async def bill_no_shows(units: Sequence[Unit[BillingDeps]], events: Sequence[BookingNoShowRecorded]) -> None:
    """No-shows, set-based: each one's fee and deposit (`bill_many`), the audit in one statement."""
    audit = await bill_many([no_show_bill(unit, event) for unit, event in zip(units, events, strict=True)])
    if audit:
        await units[0].deps.repository.audit_many(units[0].conn, audit)


bill_no_show = SetBased(bill_no_shows)


async def bill_many(bills: Sequence[Bill], *, also_lock: Sequence[str] = ()) -> Audit:
    """The fees and deposits of a set of records (one per booking in practice, in record order):
    the bookings with money to move locked in one statement (with `also_lock`, the bookings the
    caller writes more of), the charges stored in one, the deposit outcomes in one; each record
    emits its own events on its own unit. Returns the audit entries, in record order, for the
    caller to write with its own in one statement. A charge or deposit stored already (the same
    request under a new envelope id) moves nothing again."""
    due = [bill for bill in bills if bill.charge is not None or bill.deposit is not None]
    if not due and not also_lock:
        return []
    conn, repository = bills[0].unit.conn, bills[0].unit.deps.repository
    await repository.lock_bookings_billing(conn, [bill.booking_id for bill in due] + list(also_lock))
    charges = [_charge_row(bill, bill.charge) for bill in due if bill.charge is not None]
    deposits = [_deposit_row(bill, bill.deposit) for bill in due if bill.deposit is not None]
    created = await repository.insert_charges(conn, charges) if charges else set()
    settled = await repository.insert_deposit_outcomes(conn, deposits) if deposits else set()
    audit: Audit = []
    for bill in due:
        # A stored row is the first record's of the set that asked for it; a second record of
        # the same request (another envelope id) finds it stored, as it would one at a time.
        if bill.charge is not None and bill.charge.charge_id in created:
            created.discard(bill.charge.charge_id)
            _charge_created(bill, bill.charge, audit)
        if bill.deposit is not None and (bill.booking_id, bill.request_id) in settled:
            settled.discard((bill.booking_id, bill.request_id))
            _deposit_settled(bill, bill.deposit, audit)
    return audit


def _charge_row(bill: Bill, charge: domain.ChargePlan) -> dict[str, Any]:
    return {
        "charge_id": charge.charge_id,
        "booking_id": bill.booking_id,
        "request_id": bill.request_id,
        "practice_id": bill.practice_id,
        "patient_id": bill.patient_id,
        "kind": charge.kind,
        "amount_minor": charge.amount_minor,
        "currency": charge.currency,
        "code": charge.code,
        "code_system": charge.code_system,
        "charge_card": bill.decision.charge_card,  # the card is charged once the fee is final
        "status": charge.status,
        "policy_version": bill.decision.policy_version,
        "occurred_at": bill.at,
        "correlation_id": bill.unit.event.correlation_id,
        "review_until": charge.review_until,
    }


def _charge_created(bill: Bill, charge: domain.ChargePlan, audit: Audit) -> None:
    audit.append(
        {
            "at": bill.at,
            "actor": bill.actor,
            "action": "charge_created",
            "practice_id": bill.practice_id,
            "booking_id": bill.booking_id,
            "charge_id": charge.charge_id,
            "amount_minor": charge.amount_minor,
            "currency": charge.currency,
            "reason": bill.reason,
            "detail": {
                "kind": charge.kind,
                "code": charge.code,
                "code_system": charge.code_system,
                "status": charge.status,
                "review_until": charge.review_until.isoformat() if charge.review_until else None,
                "request_id": bill.request_id,
                "event_id": bill.unit.event.id,
            },
        }
    )
    bill.unit.emit(
        BILLING_EVENTS,
        ChargeCreated.new(
            charge_id=charge.charge_id,
            booking_id=bill.booking_id,
            patient_id=bill.patient_id,
            kind=charge.kind,
            amount=charge.amount,
            currency=charge.currency,
            code=charge.code,
            code_system=charge.code_system,
            status="pending_review" if charge.status == "pending_review" else "due",
            review_until=charge.review_until,
        ),
        subject=bill.booking_id,
    )


_DEPOSIT_EVENTS = {"refunded": DepositRefunded, "kept": DepositKept, "credit_note": CreditNoteIssued}


def _deposit_row(bill: Bill, plan: domain.DepositPlan) -> dict[str, Any]:
    return {
        "booking_id": bill.booking_id,
        "request_id": bill.request_id,
        "practice_id": bill.practice_id,
        "patient_id": bill.patient_id,
        "outcome": plan.outcome,
        "amount_minor": plan.amount_minor,
        "currency": plan.currency,
        "credit_note_id": plan.credit_note_id,
        "occurred_at": bill.at,
    }


def _deposit_settled(bill: Bill, plan: domain.DepositPlan, audit: Audit) -> None:
    audit.append(
        {
            "at": bill.at,
            "actor": bill.actor,
            "action": "credit_note_issued" if plan.outcome == "credit_note" else f"deposit_{plan.outcome}",
            "practice_id": bill.practice_id,
            "booking_id": bill.booking_id,
            "amount_minor": plan.amount_minor,
            "currency": plan.currency,
            "reason": bill.reason,
            "detail": {
                "request_id": bill.request_id,
                "credit_note_id": plan.credit_note_id,
                "event_id": bill.unit.event.id,
            },
        }
    )
    fields = {"booking_id": bill.booking_id, "amount": plan.amount, "currency": plan.currency}
    if plan.credit_note_id is not None:
        fields["credit_note_id"] = plan.credit_note_id
    bill.unit.emit(BILLING_EVENTS, _DEPOSIT_EVENTS[plan.outcome].new(**fields), subject=bill.booking_id)


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
    if after.amount_minor != before.amount_minor and charge["status"] in ("outstanding", "paid"):
        change = domain.plan_fee_change(
            status=charge["status"],
            amount_minor=after.amount_minor,
            paid_minor=charge["paid_minor"],
            charge_card=charge["charge_card"],
        )
        await _move_money(unit, charge, change, request_id=command.request_id, reason="adjustment", at=at, actor=actor)
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


# --- second release: money moved after the fact, review, cards on file ------------------------


async def _move_money(
    unit: Unit[BillingDeps] | Any,
    charge: Any,
    change: domain.FeeChange,
    *,
    request_id: str,
    reason: str,
    at: datetime,
    actor: str,
) -> None:
    """Apply a fee change: the charge's new status and what was paid of it, and the refund or
    top-up it needs, recorded as a movement for the refund task (refunds.py) to make through the
    gateway after this transaction committed (never here), keyed by the movement's derived id."""
    repository = unit.deps.repository
    await repository.set_charge_state(
        unit.conn, charge["charge_id"], status=change.status, paid_minor=change.paid_minor
    )
    amount_minor = change.refund_minor or change.top_up_minor
    if not amount_minor:
        return
    kind: Literal["refund", "top_up"] = "refund" if change.refund_minor else "top_up"
    payment = await repository.captured_payment(unit.conn, charge["charge_id"])
    if payment is None:
        raise LookupError(f"charge {charge['charge_id']} has money to move but no captured card payment")
    movement = domain.movement_id(charge["charge_id"], request_id, kind)
    created = await repository.insert_movement(
        unit.conn,
        {
            "movement_id": movement,
            "charge_id": charge["charge_id"],
            "booking_id": charge["booking_id"],
            "practice_id": charge["practice_id"],
            "patient_id": charge["patient_id"],
            "request_id": request_id,
            "kind": kind,
            "reason": reason,
            "amount_minor": amount_minor,
            "currency": charge["currency"],
            "gateway": payment["gateway"],
            "payment_ref": payment["gateway_ref"] if kind == "refund" else None,
            "actor": actor,
            "correlation_id": unit.correlation_id,
        },
    )
    if not created:
        return
    money = f"{domain.from_minor(amount_minor, charge['currency'])} {charge['currency']}"
    await repository.audit(
        unit.conn,
        at=at,
        actor=actor,
        action=f"{kind}_requested",
        practice_id=charge["practice_id"],
        booking_id=charge["booking_id"],
        charge_id=charge["charge_id"],
        amount_minor=amount_minor,
        currency=charge["currency"],
        reason=(
            f"{money} to give back to the card through {payment['gateway']} ({reason})"
            if kind == "refund"
            else f"{money} more to charge to the card on file through {payment['gateway']} ({reason})"
        ),
        detail={"movement_id": movement, "request_id": request_id},
    )


async def decide_review(unit: Unit[BillingDeps], command: ChargeReviewDecided) -> None:
    """Answer `charge.review_decided` once per request id: approved (the fee becomes due:
    `charge.created` with status `due`), edited (`charge.adjusted`, then due), waived
    (`charge.waived`, a paid fee refunded in full), or `charge.review_rejected`; an edit the charge
    cannot take (no amount or code, more decimals or money than its currency allows) is a
    contract violation, dead-lettered with the reason, and the fee keeps waiting."""
    repository = unit.deps.repository
    at = unit.event.envelope.time
    actor = f"staff:{command.actor.id}"
    charge_key = _canonical_uuid(command.charge_id)
    charge = await repository.lock_charge(unit.conn, charge_key) if charge_key is not None else None
    terms = _terms(charge)
    if terms is not None and command.amount is not None:
        # A malformed request is malformed whatever the fee's state: said before who may decide
        # and whether it is still in review (the charge's currency decides what an amount may be).
        problem = money_problem(command.amount, terms.currency)
        if problem is not None:
            raise ContractViolation(f"charge.review_decided: the amount {problem}")
    answer = domain.decide_review(
        roles=command.actor.roles,
        charge=terms,
        charge_status=charge["status"] if charge is not None else None,
        decision=command.decision,
        amount=command.amount,
        code=command.code,
        code_system=command.code_system,
    )
    if answer.after is not None and money_problem(answer.after.amount, answer.after.currency) is not None:
        answer = domain.ReviewAnswer(refused="the amount is more than the charge's currency allows")
    if answer.refused is not None:
        # Outside what the charge can take, and charge.review_rejected has no reason for it: the
        # contract's answer is the dead-letter topic, with the reason (the fee keeps waiting).
        raise ContractViolation(f"charge.review_decided: {answer.refused}")
    outcome = answer.outcome or ("rejected" if answer.rejection else "refused")
    first_answer = await repository.record_review(
        unit.conn,
        {
            "request_id": command.request_id,
            "charge_id": command.charge_id,
            "practice_id": charge["practice_id"] if charge is not None else None,
            "booking_id": charge["booking_id"] if charge is not None else None,
            "actor": actor,
            "actor_roles": list(command.actor.roles),
            "decision": command.decision,
            "outcome": outcome,
            "reason": answer.rejection or answer.refused,
            "before": terms.as_json() if terms is not None else None,
            "after": answer.after.as_json() if answer.after is not None else None,
            "note": command.note,
            "requested_at": at,
        },
    )
    if not first_answer:
        return
    if answer.rejection is not None:
        if charge is not None:
            await _audit_review(unit, charge, "review_rejected", f"review refused: {answer.rejection}", command, at)
        rejected = ChargeReviewRejected.new(
            charge_id=command.charge_id, request_id=command.request_id, reason=answer.rejection
        )
        unit.emit(BILLING_EVENTS, rejected, subject=charge["booking_id"] if charge is not None else command.charge_id)
        return
    assert charge is not None and terms is not None
    why = f"{command.decision} by {actor} ({', '.join(command.actor.roles)})" + (
        f": {command.note}" if command.note else ""
    )
    if answer.outcome == "waived":
        await waive_charge(unit, charge, request_id=command.request_id, at=at, actor=actor, why=why)
        return
    if answer.outcome == "edited":
        after = answer.after
        assert after is not None
        await repository.adjust_charge(
            unit.conn,
            charge["charge_id"],
            amount_minor=after.amount_minor,
            code=after.code,
            code_system=after.code_system,
        )
        unit.emit(
            BILLING_EVENTS,
            ChargeAdjusted.new(
                charge_id=command.charge_id, request_id=command.request_id, before=_fee(terms), after=_fee(after)
            ),
            subject=charge["booking_id"],
        )
        terms = after
    await approve_charge(unit, charge, terms, at=at, actor=actor, why=why, action=f"review_{answer.outcome}")


async def approve_charge(
    unit: Any, charge: Any, terms: domain.ChargeTerms, *, at: datetime, actor: str, why: str, action: str
) -> None:
    """The fee in review becomes final: charged to the card on file or owed, and announced
    `charge.created` with status `due` (its first announcement said `pending_review`)."""
    status = domain.final_status(charge["charge_card"])
    await unit.deps.repository.set_charge_state(unit.conn, charge["charge_id"], status=status, paid_minor=0)
    await unit.deps.repository.audit(
        unit.conn,
        at=at,
        actor=actor,
        action=action,
        practice_id=charge["practice_id"],
        booking_id=charge["booking_id"],
        charge_id=charge["charge_id"],
        amount_minor=terms.amount_minor,
        currency=terms.currency,
        reason=f"fee final after review ({why}); now {status.replace('_', ' ')}",
        detail={"status": status, "code": terms.code, "code_system": terms.code_system},
    )
    unit.emit(
        BILLING_EVENTS,
        ChargeCreated.new(
            charge_id=charge["charge_id"],
            booking_id=charge["booking_id"],
            patient_id=charge["patient_id"],
            kind=charge["kind"],
            amount=terms.amount,
            currency=terms.currency,
            code=terms.code,
            code_system=terms.code_system,
            status="due",
        ),
        subject=charge["booking_id"],
    )


async def waive_charge(unit: Any, charge: Any, *, request_id: str, at: datetime, actor: str, why: str) -> None:
    """The fee is not owed any more: `charge.waived`, and what was paid of it refunded in full."""
    change = domain.plan_fee_change(
        status=charge["status"],
        amount_minor=charge["amount_minor"],
        paid_minor=charge["paid_minor"],
        charge_card=charge["charge_card"],
        waive=True,
    )
    await unit.deps.repository.audit(
        unit.conn,
        at=at,
        actor=actor,
        action="charge_waived",
        practice_id=charge["practice_id"],
        booking_id=charge["booking_id"],
        charge_id=charge["charge_id"],
        amount_minor=charge["amount_minor"],
        currency=charge["currency"],
        reason=f"fee waived ({why})" + (", what was paid is refunded" if change.refund_minor else ""),
        detail={"request_id": request_id, "status_before": charge["status"]},
    )
    await _move_money(unit, charge, change, request_id=request_id, reason="waived", at=at, actor=actor)
    unit.emit(
        BILLING_EVENTS,
        ChargeWaived.new(charge_id=charge["charge_id"], booking_id=charge["booking_id"], request_id=request_id),
        subject=charge["booking_id"],
    )


async def _audit_review(
    unit: Unit[BillingDeps], charge: Any, action: str, reason: str, command: ChargeReviewDecided, at: datetime
) -> None:
    await unit.deps.repository.audit(
        unit.conn,
        at=at,
        actor=f"staff:{command.actor.id}",
        action=action,
        practice_id=charge["practice_id"],
        booking_id=charge["booking_id"],
        charge_id=charge["charge_id"],
        reason=reason,
        detail={
            "request_id": command.request_id,
            "decision": command.decision,
            "roles": list(command.actor.roles),
            "event_id": unit.event.id,
        },
    )


def charge_terms(charge: Any) -> domain.ChargeTerms:
    return domain.ChargeTerms(charge["amount_minor"], charge["currency"], charge["code"], charge["code_system"])


def _terms(charge: Any) -> domain.ChargeTerms | None:
    if charge is None:
        return None
    return domain.ChargeTerms(charge["amount_minor"], charge["currency"], charge["code"], charge["code_system"])


async def register_card(unit: Unit[BillingDeps], event: PatientCardRegistered) -> None:
    """The patient's card on file at the practice: the one the card is charged on from now on
    (a registration older than the card held changes nothing)."""
    changed = await unit.deps.repository.register_card(
        unit.conn,
        {
            "practice_id": event.practice_id,
            "patient_id": event.patient_id,
            "gateway": event.gateway,
            "customer_ref": event.customer_ref,
            "payment_method_ref": event.payment_method_ref,
            "brand": event.brand,
            "last4": event.last4,
            "registered_at": event.registered_at,
        },
    )
    log.info("card on file", practice_id=event.practice_id, patient_id=event.patient_id, changed=changed)


async def remove_card(unit: Unit[BillingDeps], event: PatientCardRemoved) -> None:
    changed = await unit.deps.repository.remove_card(
        unit.conn, event.practice_id, event.patient_id, event.payment_method_ref, event.removed_at
    )
    log.info("card removed", practice_id=event.practice_id, patient_id=event.patient_id, changed=changed)

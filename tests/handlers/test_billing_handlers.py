"""billing's handlers against an in-memory repository (no I/O): what the domain tables
(tests/unit/test_billing_domain.py) cannot see — the charge a decision raises as stored, audited
and announced (with its fee code), a card charge left to the capture task and an invoice left
owed, a deposit refunded, kept or turned into a credit note once, and adjustment requests
answered once each: role checks before the charge is looked up, `not_found` keyed by the charge
id, the stored status and currency deciding what may change."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing import domain, repository, turnaway
from billing.gateway import SandboxGateway
from billing.handlers import (
    BillingDeps,
    adjust_charge,
    bill_no_show,
    decide_review,
    register_card,
    remove_card,
)
from shared.consumer import Unit
from shared.contracts.base import Money
from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.common import Actor, Decision, Fee, StaffActor
from shared.contracts.envelope import ContractViolation
from shared.contracts.upstream import (
    ChargeAdjustmentRequested,
    ChargeReviewDecided,
    PatientCardRegistered,
    PatientCardRemoved,
)
from shared.testing import assert_same_functions, unique
from shared.topics import BILLING_COMMANDS, BILLING_EVENTS, BOOKING_EVENTS, UPSTREAM_PATIENTS

START = datetime(2026, 6, 3, 9, 0, tzinfo=UTC)
LATE_FEE = Fee.new(amount="45.00", currency="AUD", code="D9987", code_system="CDT")
NO_SHOW_FEE = Fee.new(amount="3000", currency="JPY", code="99999", code_system="CPT")


class FakeBillingRepository:
    """The functions of billing/repository.py the handlers call, over dicts (rows as dicts)."""

    def __init__(self) -> None:
        self.locked: list[str] = []  # booking ids, in lock order
        self.charges: dict[str, dict[str, Any]] = {}
        self.deposits: dict[tuple[str, str], dict[str, Any]] = {}  # (booking_id, request_id) -> outcome
        self.adjustments: dict[str, dict[str, Any]] = {}  # request_id -> the one answer
        self.audits: list[dict[str, Any]] = []
        self.payments: dict[str, dict[str, Any]] = {}  # charge_id -> the captured payment
        self.movements: dict[str, dict[str, Any]] = {}  # movement_id -> refund or top-up
        self.reviews: dict[str, dict[str, Any]] = {}  # request_id -> the one answer
        self.cards: dict[tuple[str, str], dict[str, Any]] = {}  # (practice_id, patient_id) -> card
        self.turnaway: dict[str, dict[str, Any]] = {}  # booking_id -> what the office owes
        self.calls: Counter[str] = Counter()  # the set-based writes, by name

    async def lock_bookings_billing(self, conn: Any, booking_ids: list[str]) -> None:
        self.calls["lock_bookings_billing"] += 1
        self.locked += sorted(set(booking_ids))  # the real one locks each once, in key order

    async def insert_charges(self, conn: Any, charges: list[dict[str, Any]]) -> set[str]:
        self.calls["insert_charges"] += 1
        created = set()
        for c in charges:
            if c["charge_id"] not in self.charges:
                self.charges[c["charge_id"]] = dict(c, failure_reason=None, paid_minor=0)
                created.add(c["charge_id"])
        return created

    async def insert_deposit_outcomes(self, conn: Any, deposits: list[dict[str, Any]]) -> set[tuple[str, str]]:
        self.calls["insert_deposit_outcomes"] += 1
        recorded = set()
        for d in deposits:
            if (d["booking_id"], d["request_id"]) not in self.deposits:
                self.deposits[(d["booking_id"], d["request_id"])] = dict(d)
                recorded.add((d["booking_id"], d["request_id"]))
        return recorded

    async def record_turnaway_pays(self, conn: Any, owed: list[dict[str, Any]]) -> set[str]:
        self.calls["record_turnaway_pays"] += 1
        recorded = set()
        for t in owed:
            if t["booking_id"] not in self.turnaway:
                self.turnaway[t["booking_id"]] = dict(t)
                recorded.add(t["booking_id"])
        return recorded

    async def lock_charge(self, conn: Any, charge_id: str) -> dict[str, Any] | None:
        row = self.charges.get(charge_id)
        return dict(row) if row else None

    async def adjust_charge(self, conn: Any, charge_id: str, *, amount_minor: int, code: str, code_system: str) -> None:
        self.charges[charge_id].update(amount_minor=amount_minor, code=code, code_system=code_system)

    async def record_adjustment_request(
        self,
        conn: Any,
        *,
        request_id: str,
        charge_id: str,
        practice_id: str | None,
        booking_id: str | None,
        actor: str,
        actor_roles: list[str],
        outcome: str,
        reason: str | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        requested_at: datetime,
    ) -> bool:
        if request_id in self.adjustments:
            return False
        self.adjustments[request_id] = {
            "charge_id": charge_id,
            "practice_id": practice_id,
            "booking_id": booking_id,
            "actor": actor,
            "actor_roles": actor_roles,
            "outcome": outcome,
            "reason": reason,
            "before": before,
            "after": after,
            "requested_at": requested_at,
        }
        return True

    async def audit(
        self,
        conn: Any,
        *,
        at: datetime,
        actor: str,
        action: str,
        practice_id: str,
        booking_id: str,
        reason: str,
        charge_id: str | None = None,
        amount_minor: int | None = None,
        currency: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.audits.append(
            {
                "at": at,
                "actor": actor,
                "action": action,
                "practice_id": practice_id,
                "booking_id": booking_id,
                "charge_id": charge_id,
                "amount_minor": amount_minor,
                "currency": currency,
                "reason": reason,
                "detail": detail or {},
            }
        )

    async def audit_many(self, conn: Any, entries: list[dict[str, Any]]) -> None:
        self.calls["audit_many"] += 1
        for e in entries:
            self.audits.append(
                {
                    "charge_id": None,
                    "amount_minor": None,
                    "currency": None,
                    **e,
                    "detail": e.get("detail") or {},
                }
            )

    async def set_charge_state(
        self, conn: Any, charge_id: str, *, status: str, paid_minor: int, failure_reason: str | None = None
    ) -> None:
        self.charges[charge_id].update(status=status, paid_minor=paid_minor, failure_reason=failure_reason)

    async def captured_payment(self, conn: Any, charge_id: str) -> dict[str, Any] | None:
        return self.payments.get(charge_id)

    async def insert_movement(self, conn: Any, m: dict[str, Any]) -> bool:
        if m["movement_id"] in self.movements:
            return False
        self.movements[m["movement_id"]] = dict(m, status="pending")
        return True

    async def record_review(self, conn: Any, r: dict[str, Any]) -> bool:
        if r["request_id"] in self.reviews:
            return False
        self.reviews[r["request_id"]] = dict(r)
        return True

    async def register_card(self, conn: Any, c: dict[str, Any]) -> bool:
        held = self.cards.get((c["practice_id"], c["patient_id"]))
        if held is not None and c["registered_at"] <= max(
            held["registered_at"], held.get("removed_at") or held["registered_at"]
        ):
            return False
        self.cards[(c["practice_id"], c["patient_id"])] = dict(c, removed_at=None)
        return True

    async def remove_card(
        self, conn: Any, practice_id: str, patient_id: str, payment_method_ref: str, removed_at: datetime
    ) -> bool:
        held = self.cards.get((practice_id, patient_id))
        if held is None or held["payment_method_ref"] != payment_method_ref or held["removed_at"] is not None:
            return False
        held["removed_at"] = removed_at
        return True


Handle = Callable[..., Awaitable[list[tuple[str, str, dict[str, Any]]]]]


@pytest.fixture
def handle(unit_for: Callable[..., Unit[Any]]) -> Handle:
    """`await handle(handler, payload, repo, **unit_for options)`: the handler run on a fresh unit
    (a new envelope id each time, as a replay has); returns what it emitted as (type, key, data)."""

    async def handle(
        handler: Any, payload: Any, repo: FakeBillingRepository, **kw: Any
    ) -> list[tuple[str, str, dict[str, Any]]]:
        if isinstance(payload, ChargeAdjustmentRequested | ChargeReviewDecided):
            topic = BILLING_COMMANDS
        elif isinstance(payload, PatientCardRegistered | PatientCardRemoved):
            topic = UPSTREAM_PATIENTS
        else:
            topic = BOOKING_EVENTS
        kw.setdefault(
            "subject",
            getattr(payload, "booking_id", None) or getattr(payload, "charge_id", None) or payload.patient_id,
        )
        deps = BillingDeps(gateway=SandboxGateway(), repository=repo)
        unit = unit_for("billing", deps, topic, payload, **kw)
        await handler(unit, payload)
        assert {e.topic for e in unit.emitted} <= {BILLING_EVENTS}
        return [(e.envelope["type"], e.key, e.envelope["data"]) for e in unit.emitted]

    return handle


def decision(
    classification: str = "late",
    *,
    fee: Fee | None = LATE_FEE,
    charge_card: bool = False,
    deposit_action: str = "none",
    review_hours: int | None = None,
) -> Decision:
    return Decision.new(
        allowed=True,
        classification=classification,
        fee=fee,
        charge_card=charge_card,
        deposit_action=deposit_action,
        review_hours=review_hours,
        policy_version="r1.s3",
        explanation="Cancelled 5 hours ahead: inside the 24-hour late window.",
    )


def cancelled(the_decision: Decision, *, deposit: Money | None = None) -> BookingCancelled:
    return BookingCancelled.new(
        booking_id=unique("bk"),
        request_id=unique("req"),
        practice_id="practice-1",
        patient_id="pat-1",
        professional_id="pro-1",
        practitioner_id="dr-1",
        service_code="hygiene",
        starts_at=START,
        ends_at=START + timedelta(minutes=45),
        cancelled_at=START - timedelta(hours=5),
        actor=Actor.new(kind="staff", id="staff-1", roles=["reception"]),
        channel="practice",
        status_label="Cancelled",
        classification=the_decision.classification,
        decision=the_decision,
        deposit=deposit,
    )


def no_show(the_decision: Decision) -> BookingNoShowRecorded:
    return BookingNoShowRecorded.new(
        booking_id=unique("bk"),
        request_id=unique("req"),
        practice_id="practice-1",
        patient_id="pat-1",
        professional_id="pro-1",
        party="patient",
        code="DNA",
        starts_at=START,
        recorded_at=START + timedelta(minutes=70),
        decision=the_decision,
    )


def adjustment(
    charge_id: str,
    roles: list[str],
    *,
    amount: str | None = "30.00",
    code: str | None = None,
    request_id: str | None = None,
) -> ChargeAdjustmentRequested:
    return ChargeAdjustmentRequested.new(
        request_id=request_id or unique("adj"),
        charge_id=charge_id,
        actor=StaffActor.new(id="staff-9", roles=roles),
        amount=amount,
        code=code,
    )


async def a_charge(handle: Handle, repo: FakeBillingRepository, *, charge_card: bool = False) -> tuple[str, str]:
    """(charge_id, booking_id) of a 45.00 AUD late-cancellation charge raised through the handler."""
    event = cancelled(decision(charge_card=charge_card))
    await handle(turnaway.on_cancelled, event, repo)
    return domain.charge_id(event.booking_id, event.request_id), event.booking_id


def test_the_fake_has_the_repositorys_signatures() -> None:
    assert_same_functions(FakeBillingRepository(), repository)


@pytest.mark.parametrize(
    ("charge_card", "status"), [(False, "outstanding"), (True, "pending_capture")], ids=["invoice", "card"]
)
async def test_a_late_cancellation_raises_its_fee_once_as_an_invoice_or_a_card_charge(
    charge_card: bool, status: str, handle: Handle
) -> None:
    repo = FakeBillingRepository()
    event = cancelled(decision(charge_card=charge_card))
    charge_id = domain.charge_id(event.booking_id, event.request_id)

    # Only the charge: a card is charged by the capture task after the commit, never here.
    assert await handle(turnaway.on_cancelled, event, repo) == [
        (
            "charge.created",
            event.booking_id,
            {
                "charge_id": charge_id,
                "booking_id": event.booking_id,
                "patient_id": "pat-1",
                "kind": "late_cancellation",
                "amount": "45.00",
                "currency": "AUD",
                "code": "D9987",
                "code_system": "CDT",
                "status": "due",
            },
        ),
    ]
    assert await handle(turnaway.on_cancelled, event, repo) == []  # replayed under a new envelope id

    charge = repo.charges[charge_id]
    assert (charge["status"], charge["charge_card"], charge["amount_minor"], charge["policy_version"]) == (
        status,
        charge_card,
        4500,
        "r1.s3",
    )
    [audit] = repo.audits
    assert (audit["action"], audit["actor"], audit["charge_id"], audit["amount_minor"]) == (
        "charge_created",
        "staff:staff-1",
        charge_id,
        4500,
    )
    assert audit["reason"].startswith("cancellation classified late under policy r1.s3: Cancelled 5 hours ahead")
    assert audit["detail"]["code"] == "D9987" and audit["detail"]["status"] == status
    assert repo.locked == [event.booking_id, event.booking_id]


async def test_a_no_show_raises_a_no_show_charge_in_its_currency_audited_as_its_producer(
    unit_for: Callable[..., Unit[Any]],
) -> None:
    repo = FakeBillingRepository()
    event = no_show(decision("no_show", fee=NO_SHOW_FEE))
    unit = unit_for(
        "billing",
        BillingDeps(gateway=SandboxGateway(), repository=repo),
        BOOKING_EVENTS,
        event,
        subject=event.booking_id,
    )
    await bill_no_show(unit, event)

    [created] = unit.emitted
    data = created.envelope["data"]
    assert (created.envelope["type"], created.key, data["kind"], data["amount"], data["currency"], data["code"]) == (
        "charge.created",
        event.booking_id,
        "no_show",
        "3000",
        "JPY",
        "99999",
    )
    # booking.no_show_recorded does not name who reported it: the audit names its producer.
    assert repo.audits[0]["actor"] == unit.event.envelope.source
    assert repo.audits[0]["reason"].startswith("no-show classified no_show")


async def test_a_decision_with_no_fee_and_no_deposit_moves_nothing_and_locks_nothing(handle: Handle) -> None:
    repo = FakeBillingRepository()
    assert await handle(turnaway.on_cancelled, cancelled(decision("timely", fee=None)), repo) == []
    assert (repo.locked, repo.charges, repo.audits) == ([], {}, [])


@pytest.mark.parametrize(
    ("action", "outcome", "event_type", "audited"),
    [
        ("refund", "refunded", "deposit.refunded", "deposit_refunded"),
        ("keep", "kept", "deposit.kept", "deposit_kept"),
        ("credit_note", "credit_note", "credit_note.issued", "credit_note_issued"),
    ],
)
async def test_a_deposit_is_settled_once_as_the_decision_says(
    action: str, outcome: str, event_type: str, audited: str, handle: Handle
) -> None:
    repo = FakeBillingRepository()
    event = cancelled(decision(fee=None, deposit_action=action), deposit=Money.new(amount="20.00", currency="AUD"))
    expected = {"booking_id": event.booking_id, "amount": "20.00", "currency": "AUD"}
    if action == "credit_note":
        expected["credit_note_id"] = domain.credit_note_id(event.booking_id, event.request_id)

    assert await handle(turnaway.on_cancelled, event, repo) == [(event_type, event.booking_id, expected)]
    assert await handle(turnaway.on_cancelled, event, repo) == []

    [stored] = repo.deposits.values()
    assert (stored["outcome"], stored["amount_minor"], stored["credit_note_id"]) == (
        outcome,
        2000,
        expected.get("credit_note_id"),
    )
    assert [a["action"] for a in repo.audits] == [audited]
    assert repo.charges == {}


async def test_a_fee_and_a_deposit_are_both_settled(handle: Handle) -> None:
    repo = FakeBillingRepository()
    event = cancelled(decision(deposit_action="keep"), deposit=Money.new(amount="20.00", currency="AUD"))
    emitted = await handle(turnaway.on_cancelled, event, repo)
    assert [t for t, _, _ in emitted] == ["charge.created", "deposit.kept"]


async def test_a_permitted_adjustment_changes_the_charge_and_says_before_and_after(handle: Handle) -> None:
    repo = FakeBillingRepository()
    charge_id, booking_id = await a_charge(handle, repo)
    request = adjustment(charge_id, ["therapist", "financial"], code="D9986")
    at = datetime(2026, 6, 4, 10, 0, tzinfo=UTC)

    assert await handle(adjust_charge, request, repo, time=at) == [
        (
            "charge.adjusted",
            booking_id,
            {
                "charge_id": charge_id,
                "request_id": request.request_id,
                "before": {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"},
                "after": {"amount": "30.00", "currency": "AUD", "code": "D9986", "code_system": "CDT"},
            },
        ),
    ]
    assert (repo.charges[charge_id]["amount_minor"], repo.charges[charge_id]["code"]) == (3000, "D9986")
    answer = repo.adjustments[request.request_id]
    assert (answer["outcome"], answer["actor"], answer["requested_at"], answer["booking_id"]) == (
        "adjusted",
        "staff:staff-9",
        at,
        booking_id,
    )
    assert repo.audits[-1]["action"] == "charge_adjusted" and repo.audits[-1]["at"] == at  # the command's own time

    # The same request again: answered once, and the charge is not adjusted twice.
    assert (
        await handle(
            adjust_charge, adjustment(charge_id, ["owner"], amount="10.00", request_id=request.request_id), repo
        )
        == []
    )
    assert repo.charges[charge_id]["amount_minor"] == 3000


@pytest.mark.parametrize("roles", [["reception"], ["therapist"], []])
async def test_an_adjustment_by_someone_without_the_role_is_refused_and_audited(
    roles: list[str], handle: Handle
) -> None:
    repo = FakeBillingRepository()
    charge_id, booking_id = await a_charge(handle, repo)
    request = adjustment(charge_id, roles)

    assert await handle(adjust_charge, request, repo) == [
        (
            "charge.adjustment_rejected",
            booking_id,
            {"charge_id": charge_id, "request_id": request.request_id, "reason": "forbidden"},
        )
    ]
    assert repo.charges[charge_id]["amount_minor"] == 4500
    assert (repo.audits[-1]["action"], repo.audits[-1]["reason"]) == (
        "adjustment_rejected",
        "adjustment refused: forbidden",
    )
    assert repo.adjustments[request.request_id]["outcome"] == "rejected"


@pytest.mark.parametrize(
    ("charge_id", "roles", "reason"),
    [
        ("6f1c1d1e-8a43-4c4b-9a52-000000000000", ["owner"], "not_found"),  # a uuid no charge has
        ("not-a-uuid", ["owner"], "not_found"),  # charge ids are uuids: this names no charge
        ("6f1c1d1e-8a43-4c4b-9a52-000000000000", ["reception"], "forbidden"),  # permission is checked first
    ],
)
async def test_an_adjustment_of_no_charge_is_answered_keyed_by_the_charge_id(
    charge_id: str, roles: list[str], reason: str, handle: Handle
) -> None:
    repo = FakeBillingRepository()
    request = adjustment(charge_id, roles)
    assert await handle(adjust_charge, request, repo) == [
        (
            "charge.adjustment_rejected",
            charge_id,
            {"charge_id": charge_id, "request_id": request.request_id, "reason": reason},
        )
    ]
    assert repo.adjustments[request.request_id]["booking_id"] is None
    assert repo.audits == []  # no booking to audit it under; the answer is recorded


async def test_an_adjustment_names_its_charge_in_any_uuid_spelling(handle: Handle) -> None:
    repo = FakeBillingRepository()
    charge_id, booking_id = await a_charge(handle, repo)
    request = adjustment(charge_id.upper(), ["biller"])
    [(kind, key, data)] = await handle(adjust_charge, request, repo)
    assert (kind, key, data["charge_id"]) == ("charge.adjusted", booking_id, charge_id.upper())


async def test_an_amount_beyond_what_the_charges_currency_allows_is_an_invalid_request(handle: Handle) -> None:
    repo = FakeBillingRepository()
    charge_id, booking_id = await a_charge(handle, repo)
    # Within the contract's bound (the most any currency allows), beyond AUD's own maximum.
    request = adjustment(charge_id, ["owner"], amount="5000000")
    assert await handle(adjust_charge, request, repo) == [
        (
            "charge.adjustment_rejected",
            booking_id,
            {"charge_id": charge_id, "request_id": request.request_id, "reason": "invalid_request"},
        )
    ]
    assert repo.charges[charge_id]["amount_minor"] == 4500
    assert repo.adjustments[request.request_id]["before"] == {
        "amount_minor": 4500,
        "currency": "AUD",
        "code": "D9987",
        "code_system": "CDT",
    }


async def test_a_charge_being_captured_keeps_its_amount_but_its_code_can_be_corrected(handle: Handle) -> None:
    repo = FakeBillingRepository()
    charge_id, _ = await a_charge(handle, repo, charge_card=True)

    [(kind, _, data)] = await handle(adjust_charge, adjustment(charge_id, ["manager"], amount="30.00"), repo)
    assert (kind, data["reason"]) == ("charge.adjustment_rejected", "capture_in_progress")
    [(kind, _, data)] = await handle(adjust_charge, adjustment(charge_id, ["manager"], amount=None, code="D9986"), repo)
    assert (kind, data["after"]["amount"], data["after"]["code"]) == ("charge.adjusted", "45.00", "D9986")
    assert (repo.charges[charge_id]["amount_minor"], repo.charges[charge_id]["status"]) == (4500, "pending_capture")


# --- second release: review, fees changed after money moved, cards on file ----------------------


def review(charge_id: str, decision_: str, roles: list[str] | None = None, **fields: Any) -> ChargeReviewDecided:
    return ChargeReviewDecided.new(
        request_id=fields.pop("request_id", None) or unique("rev"),
        charge_id=charge_id,
        actor=StaffActor.new(id="staff-7", roles=roles if roles is not None else ["biller"]),
        decision=decision_,
        **fields,
    )


async def a_charge_in_review(
    handle: Handle, repo: FakeBillingRepository, *, charge_card: bool = True
) -> tuple[str, str]:
    event = cancelled(decision(charge_card=charge_card, review_hours=48))
    [(kind, _, data)] = await handle(turnaway.on_cancelled, event, repo)
    assert (kind, data["status"], data["review_until"]) == ("charge.created", "pending_review", "2026-06-05T04:00:00Z")
    return domain.charge_id(event.booking_id, event.request_id), event.booking_id


def paid(repo: FakeBillingRepository, charge_id: str) -> None:
    """The capture task took the card (as capture.record_payment records it)."""
    repo.charges[charge_id].update(status="paid", paid_minor=repo.charges[charge_id]["amount_minor"])
    repo.payments[charge_id] = {"gateway": "stripe", "gateway_ref": "pi_first", "amount_minor": 4500}


async def test_a_fee_in_review_is_not_taken_until_staff_approve_it_once(handle: Handle) -> None:
    repo = FakeBillingRepository()
    charge_id, booking_id = await a_charge_in_review(handle, repo)
    assert repo.charges[charge_id]["status"] == "pending_review"  # the capture task does not claim it

    request = review(charge_id, "approve", note="Checked with the practitioner.")
    [(kind, key, data)] = await handle(decide_review, request, repo)
    assert (kind, key, data["status"], data["amount"], data["charge_id"]) == (
        "charge.created",
        booking_id,
        "due",
        "45.00",
        charge_id,
    )
    assert repo.charges[charge_id]["status"] == "pending_capture"  # now the card is charged
    assert repo.reviews[request.request_id]["outcome"] == "approved"
    assert (repo.audits[-1]["action"], repo.audits[-1]["actor"]) == ("review_approved", "staff:staff-7")
    assert "Checked with the practitioner." in repo.audits[-1]["reason"]
    # The same request again: answered once; another decision after it: not pending any more.
    assert await handle(decide_review, review(charge_id, "waive", request_id=request.request_id), repo) == []
    [(kind, _, data)] = await handle(decide_review, review(charge_id, "approve"), repo)
    assert (kind, data["reason"]) == ("charge.review_rejected", "not_pending")


async def test_an_edit_in_review_adjusts_then_makes_the_fee_due(handle: Handle) -> None:
    repo = FakeBillingRepository()
    charge_id, _ = await a_charge_in_review(handle, repo, charge_card=False)
    emitted = await handle(decide_review, review(charge_id, "edit", amount="30.00", code="D9986"), repo)
    assert [(k, d.get("after", {}).get("amount"), d.get("amount"), d.get("status")) for k, _, d in emitted] == [
        ("charge.adjusted", "30.00", None, None),
        ("charge.created", None, "30.00", "due"),
    ]
    charge = repo.charges[charge_id]
    assert (charge["status"], charge["amount_minor"], charge["code"]) == ("outstanding", 3000, "D9986")


@pytest.mark.parametrize(
    ("amount", "why"),
    [("45.001", "more decimal places than AUD has"), ("1000000000.00", "more than the most a AUD amount may be")],
)
async def test_an_edit_the_charge_cannot_take_is_a_contract_violation_and_the_fee_keeps_waiting(
    handle: Handle, amount: str, why: str
) -> None:
    """Sub-cent or beyond the currency's maximum: no rejection reason fits, so the consumer
    dead-letters it with this reason (which quotes no value); nothing is recorded or emitted."""
    repo = FakeBillingRepository()
    charge_id, _ = await a_charge_in_review(handle, repo)
    request = review(charge_id, "edit", amount=amount)
    with pytest.raises(ContractViolation, match=why) as refused:
        await handle(decide_review, request, repo)
    assert amount not in str(refused.value)
    assert repo.charges[charge_id]["status"] == "pending_review"
    assert request.request_id not in repo.reviews


async def test_an_amount_the_currency_cannot_hold_is_refused_as_malformed_whatever_the_fees_state(
    handle: Handle,
) -> None:
    """Before who may decide and whether the fee is still in review: a malformed request is
    dead-lettered, not answered not_pending."""
    repo = FakeBillingRepository()
    charge_id, _ = await a_charge(handle, repo)  # outstanding, never in review
    for amount in ("45.001", "1000000000.00"):
        with pytest.raises(ContractViolation, match="the amount"):
            await handle(decide_review, review(charge_id, "edit", amount=amount), repo)
    [(kind, _, data)] = await handle(decide_review, review(charge_id, "edit", amount="40.00"), repo)
    assert (kind, data["reason"]) == ("charge.review_rejected", "not_pending")


async def test_waiving_in_review_takes_nothing_and_says_so(handle: Handle) -> None:
    repo = FakeBillingRepository()
    charge_id, booking_id = await a_charge_in_review(handle, repo)
    request = review(charge_id, "waive")
    assert await handle(decide_review, request, repo) == [
        (
            "charge.waived",
            booking_id,
            {"charge_id": charge_id, "booking_id": booking_id, "request_id": request.request_id},
        )
    ]
    assert (repo.charges[charge_id]["status"], repo.movements) == ("waived", {})


async def test_waiving_a_paid_fee_refunds_all_of_it_through_the_gateway_once(handle: Handle) -> None:
    repo = FakeBillingRepository()
    charge_id, _ = await a_charge(handle, repo, charge_card=True)
    paid(repo, charge_id)
    request = review(charge_id, "waive", roles=["owner"])
    [(kind, _, _)] = await handle(decide_review, request, repo)
    assert kind == "charge.waived"
    [movement] = repo.movements.values()
    assert (movement["kind"], movement["reason"], movement["amount_minor"], movement["payment_ref"]) == (
        "refund",
        "waived",
        4500,
        "pi_first",
    )
    assert movement["movement_id"] == domain.movement_id(charge_id, request.request_id, "refund")
    assert (repo.charges[charge_id]["status"], repo.charges[charge_id]["paid_minor"]) == ("waived", 0)
    assert [a["action"] for a in repo.audits[-2:]] == ["charge_waived", "refund_requested"]


@pytest.mark.parametrize(
    ("roles", "charge", "reason", "keyed_by_charge"),
    [
        (["reception"], True, "forbidden", False),
        (["owner"], False, "not_found", True),
        (["reception"], False, "forbidden", True),
    ],
)
async def test_a_review_decision_that_cannot_be_made_is_rejected(
    roles: list[str], charge: bool, reason: str, keyed_by_charge: bool, handle: Handle
) -> None:
    repo = FakeBillingRepository()
    charge_id, booking_id = (
        await a_charge_in_review(handle, repo) if charge else ("6f1c1d1e-8a43-4c4b-9a52-00000000000a", "")
    )
    request = review(charge_id, "approve", roles=roles)
    assert await handle(decide_review, request, repo) == [
        (
            "charge.review_rejected",
            charge_id if keyed_by_charge else booking_id,
            {"charge_id": charge_id, "request_id": request.request_id, "reason": reason},
        )
    ]
    if charge:
        assert repo.charges[charge_id]["status"] == "pending_review"


@pytest.mark.parametrize(
    ("amount", "charge_card", "status", "paid_minor", "movement"),
    [
        ("30.00", True, "paid", 3000, ("refund", 1500)),
        ("30.00", False, "paid", 3000, ("refund", 1500)),
        ("60.00", True, "pending_capture", 4500, ("top_up", 1500)),
        ("60.00", False, "outstanding", 4500, None),
    ],
)
async def test_changing_a_paid_fee_moves_the_difference_once(
    amount: str, charge_card: bool, status: str, paid_minor: int, movement: tuple[str, int] | None, handle: Handle
) -> None:
    repo = FakeBillingRepository()
    charge_id, _ = await a_charge(handle, repo, charge_card=charge_card)
    paid(repo, charge_id)
    request = adjustment(charge_id, ["biller"], amount=amount)
    [(kind, _, data)] = await handle(adjust_charge, request, repo)
    assert (kind, data["after"]["amount"]) == ("charge.adjusted", amount)
    assert (repo.charges[charge_id]["status"], repo.charges[charge_id]["paid_minor"]) == (status, paid_minor)
    assert [(m["kind"], m["amount_minor"]) for m in repo.movements.values()] == ([movement] if movement else [])
    if movement:
        [moved] = repo.movements.values()
        assert (moved["reason"], moved["actor"], moved["gateway"]) == ("adjustment", "staff:staff-9", "stripe")
    # The same request again moves nothing more.
    assert (
        await handle(
            adjust_charge, adjustment(charge_id, ["biller"], amount=amount, request_id=request.request_id), repo
        )
        == []
    )
    assert len(repo.movements) == (1 if movement else 0)


async def test_a_card_on_file_is_kept_per_practice_and_the_newest_event_wins(handle: Handle) -> None:
    repo = FakeBillingRepository()
    t = datetime(2026, 5, 1, tzinfo=UTC)

    def registered(pm: str, at: datetime) -> PatientCardRegistered:
        return PatientCardRegistered.new(
            patient_id="pat-1",
            practice_id="practice-1",
            gateway="stripe",
            customer_ref="cus_1",
            payment_method_ref=pm,
            registered_at=at,
            last4="4242",
        )

    assert await handle(register_card, registered("pm_new", t + timedelta(days=2)), repo) == []
    await handle(register_card, registered("pm_old", t), repo)  # older: changes nothing
    assert repo.cards[("practice-1", "pat-1")]["payment_method_ref"] == "pm_new"
    removed = PatientCardRemoved.new(
        patient_id="pat-1", practice_id="practice-1", payment_method_ref="pm_new", removed_at=t + timedelta(days=3)
    )
    await handle(remove_card, removed, repo)
    assert repo.cards[("practice-1", "pat-1")]["removed_at"] == t + timedelta(days=3)
    await handle(register_card, registered("pm_new", t + timedelta(days=2)), repo)  # replayed: stays removed
    assert repo.cards[("practice-1", "pat-1")]["removed_at"] is not None


# --- sets: many records of one type at once ----------------------------------------------------------

AUD90 = {"amount": "90.00", "currency": "AUD"}


def _with_turnaway_pay(event: BookingCancelled) -> BookingCancelled:
    data = event.to_json_dict()
    data["decision"]["turnaway_pay"] = AUD90
    return BookingCancelled.model_validate(data)


def _cancellations(n: int) -> list[BookingCancelled]:
    """`n` cancellations cycling through every branch: an invoice, a card charge in review, no fee
    and no deposit, a deposit turned into a credit note, a fee and a kept deposit, a fee with the
    office's turn-away pay."""
    deposit = Money.new(amount="20.00", currency="AUD")
    makers: list[Callable[[], BookingCancelled]] = [
        lambda: cancelled(decision()),
        lambda: cancelled(decision(charge_card=True, review_hours=24)),
        lambda: cancelled(decision("timely", fee=None)),
        lambda: cancelled(decision("timely", fee=None, deposit_action="credit_note"), deposit=deposit),
        lambda: cancelled(decision(deposit_action="keep"), deposit=deposit),
        lambda: _with_turnaway_pay(cancelled(decision())),
    ]
    return [makers[i % len(makers)]() for i in range(n)]


async def _run_set(
    unit_for: Callable[..., Unit[Any]], handler: Any, repo: FakeBillingRepository, payloads: list[Any], ids: list[str]
) -> list[Unit[Any]]:
    deps = BillingDeps(gateway=SandboxGateway(), repository=repo)
    units = [
        unit_for("billing", deps, BOOKING_EVENTS, p, subject=p.booking_id, event_id=i, correlation_id=f"c-{i}")
        for p, i in zip(payloads, ids, strict=True)
    ]
    await handler.handle_many(units, payloads)
    return units


def _emitted(unit: Unit[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e.envelope["type"], e.key, e.envelope["data"]) for e in unit.emitted]


def _trail(repo: FakeBillingRepository) -> dict[str, list[dict[str, Any]]]:
    """The audit per booking, in its order (entries of different bookings carry no order)."""
    trail: dict[str, list[dict[str, Any]]] = {}
    for entry in repo.audits:
        trail.setdefault(entry["booking_id"], []).append(entry)
    return trail


@pytest.mark.parametrize("size", [6, 13])
async def test_a_set_of_cancellations_costs_one_call_of_each_kind_and_each_record_publishes_its_own(
    size: int, unit_for: Callable[..., Unit[Any]]
) -> None:
    events = _cancellations(size)
    replayed = events[0]  # billed before the set: its replay moves nothing again
    ids = [unique("ev") for _ in events]
    one_by_one, as_set = FakeBillingRepository(), FakeBillingRepository()
    before = unique("ev")
    for repo in (one_by_one, as_set):
        await _run_set(unit_for, turnaway.on_cancelled, repo, [replayed], [before])
        repo.calls.clear()

    singles = [
        (await _run_set(unit_for, turnaway.on_cancelled, one_by_one, [e], [i]))[0]
        for e, i in zip(events, ids, strict=True)
    ]
    units = await _run_set(unit_for, turnaway.on_cancelled, as_set, events, ids)

    # A fixed number of calls for the whole set, whatever its size.
    assert as_set.calls == Counter(
        lock_bookings_billing=1, insert_charges=1, insert_deposit_outcomes=1, record_turnaway_pays=1, audit_many=1
    )
    # one by one: a call per record that moved money (all but the replay and the timely ones)
    assert one_by_one.calls["audit_many"] == sum(1 for u in singles if u.emitted) == size - 1 - (size + 3) // 6
    # Each record publishes exactly what it published alone, on its own unit and correlation id.
    assert [_emitted(u) for u in units] == [_emitted(u) for u in singles]
    assert _emitted(units[0]) == []
    assert [t for t, _, _ in _emitted(units[4])] == ["charge.created", "deposit.kept"]
    assert [t for t, _, _ in _emitted(units[5])] == ["charge.created", "turnaway_pay.owed"]
    assert _emitted(units[2]) == []
    for unit in units:
        assert {e.envelope.get("correlationid") for e in unit.emitted} <= {unit.event.correlation_id}
    # The same rows and the same audit, booking by booking, as one record at a time.
    assert (as_set.charges, as_set.deposits, as_set.turnaway) == (
        one_by_one.charges,
        one_by_one.deposits,
        one_by_one.turnaway,
    )
    assert _trail(as_set) == _trail(one_by_one)
    assert _trail(as_set)[events[5].booking_id][-1]["action"] == "turnaway_pay_owed"
    # Only the bookings with money to move are locked, each once.
    moving = sorted({e.booking_id for e in events if e.decision.fee is not None or e.deposit is not None})
    assert as_set.locked[-len(moving) :] == moving


async def test_a_set_of_no_shows_costs_one_call_of_each_kind(unit_for: Callable[..., Unit[Any]]) -> None:
    events = [no_show(decision("no_show", fee=NO_SHOW_FEE if i % 3 else None)) for i in range(7)]
    repo = FakeBillingRepository()
    units = await _run_set(unit_for, bill_no_show, repo, events, [unique("ev") for _ in events])
    assert repo.calls == Counter(lock_bookings_billing=1, insert_charges=1, audit_many=1)
    assert [[t for t, _, _ in _emitted(u)] for u in units] == [
        [] if i % 3 == 0 else ["charge.created"] for i in range(7)
    ]
    assert [a["booking_id"] for a in repo.audits] == [e.booking_id for i, e in enumerate(events) if i % 3]


async def test_a_set_where_nothing_moves_calls_nothing(unit_for: Callable[..., Unit[Any]]) -> None:
    repo = FakeBillingRepository()
    events = [cancelled(decision("timely", fee=None)) for _ in range(3)]
    units = await _run_set(unit_for, turnaway.on_cancelled, repo, events, [unique("ev") for _ in events])
    assert [u.emitted for u in units] == [[], [], []]
    assert repo.calls == Counter()


async def test_the_same_request_twice_in_a_set_is_billed_once_by_the_first(
    unit_for: Callable[..., Unit[Any]],
) -> None:
    """Two envelopes of one request in one set (the consumer keeps them apart only by Kafka key):
    the first raises the fee and settles the deposit, the second finds them done."""
    event = _with_turnaway_pay(
        cancelled(decision(deposit_action="refund"), deposit=Money.new(amount="20.00", currency="AUD"))
    )
    repo = FakeBillingRepository()
    first, second = await _run_set(unit_for, turnaway.on_cancelled, repo, [event, event], ["ev-1", "ev-2"])
    assert [t for t, _, _ in _emitted(first)] == ["charge.created", "deposit.refunded", "turnaway_pay.owed"]
    assert _emitted(second) == []
    assert [a["action"] for a in repo.audits] == ["charge_created", "deposit_refunded", "turnaway_pay_owed"]
    assert all(a["detail"].get("event_id", "ev-1") == "ev-1" for a in repo.audits)

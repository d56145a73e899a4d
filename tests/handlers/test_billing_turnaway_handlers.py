"""billing's turn-away pay (turnaway.py) against the in-memory repository: owed once per
booking when staff cancelled a booked professional and the decision carries it, audited, and
never for anyone else's cancellation; the patient's fee is billed as before."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from test_billing_handlers import FakeBillingRepository, cancelled, decision

from billing import turnaway
from billing.gateway import SandboxGateway
from billing.handlers import BillingDeps
from shared.consumer import Unit
from shared.contracts.booking import BookingCancelled
from shared.topics import BILLING_EVENTS, BOOKING_EVENTS

Handle = Callable[..., Awaitable[list[tuple[str, str, dict[str, Any]]]]]


@pytest.fixture
def handle(unit_for: Callable[..., Unit[Any]]) -> Handle:
    async def handle(handler: Any, payload: Any, repo: Any) -> list[tuple[str, str, dict[str, Any]]]:
        deps = BillingDeps(gateway=SandboxGateway(), repository=repo)
        unit = unit_for("billing", deps, BOOKING_EVENTS, payload, subject=payload.booking_id)
        await handler(unit, payload)
        assert {e.topic for e in unit.emitted} <= {BILLING_EVENTS}
        return [(e.envelope["type"], e.key, e.envelope["data"]) for e in unit.emitted]

    return handle


def with_pay(
    actor: str = "staff", pay: dict[str, str] | None = None, professional: str | None = "pro-1"
) -> BookingCancelled:
    """A late staff cancellation (the patient's fee as in test_billing_handlers), with the office's
    turn-away pay on the decision when `pay` is given."""
    data = cancelled(decision()).to_json_dict()
    if pay is not None:
        data["decision"]["turnaway_pay"] = pay
    data["actor"]["kind"] = actor
    if professional is None:
        data.pop("professional_id")
    return BookingCancelled.model_validate(data)


AUD90 = {"amount": "90.00", "currency": "AUD"}


async def test_turnaway_pay_is_owed_once_and_audited(handle: Handle) -> None:
    repo = FakeBillingRepository()
    event = with_pay(pay=AUD90)
    first = await handle(turnaway.on_cancelled, event, repo)
    again = await handle(turnaway.on_cancelled, event, repo)

    owed = [(t, k, d) for t, k, d in first if t == "turnaway_pay.owed"]
    assert owed == [
        (
            "turnaway_pay.owed",
            event.booking_id,
            {
                "booking_id": event.booking_id,
                "practice_id": "practice-1",
                "professional_id": "pro-1",
                "amount": "90.00",
                "currency": "AUD",
            },
        )
    ]
    assert "charge.created" in [t for t, _, _ in first]  # the patient's fee as before
    assert [t for t, _, _ in again if t == "turnaway_pay.owed"] == []
    row = repo.turnaway[event.booking_id]
    assert (row["amount_minor"], row["currency"], row["owed_at"]) == (9000, "AUD", event.cancelled_at)
    [audit] = [a for a in repo.audits if a["action"] == "turnaway_pay_owed"]
    assert audit["actor"] == "staff:staff-1" and audit["amount_minor"] == 9000


@pytest.mark.parametrize(
    "event",
    [
        with_pay(pay=None),  # timely, or no price: nothing owed
        with_pay(actor="patient", pay=AUD90),  # only the office owes it
        with_pay(pay=AUD90, professional=None),  # nobody booked to pay
    ],
)
async def test_nothing_is_owed_otherwise(handle: Handle, event: BookingCancelled) -> None:
    repo = FakeBillingRepository()
    emitted = await handle(turnaway.on_cancelled, event, repo)
    assert [t for t, _, _ in emitted if t == "turnaway_pay.owed"] == [] and repo.turnaway == {}

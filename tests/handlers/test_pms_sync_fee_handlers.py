"""pms-sync's `pms.update_fee` handlers (fees.py) against fakes of its two repositories: a fee in
review is told to no PMS until it is final; a final fee changed after the fact (adjusted,
waived) is told once, to the integration the booking's cancellation went to; an older fee
update not acknowledged yet is superseded; a booking no PMS was sent gets nothing. A fee update
that fails ends `pms.sync_failed` without a manual update the contract cannot name.

The rules as a table are in tests/unit/test_pms_sync_domain.py; the SQL and the broker in
tests/integration/test_pms_sync_service.py.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from test_pms_sync_handlers import BOOKING, PRACTICE, PRAKTIKA, SETTINGS, FakeRepository, cancelled, configured

from pms_sync import domain, fee_repository, fees, handlers
from pms_sync.handlers import PmsSyncDeps
from shared.consumer import Unit
from shared.contracts.base import Payload
from shared.contracts.billing import ChargeAdjusted, ChargeCreated, ChargeWaived
from shared.contracts.booking import BookingCancelled
from shared.contracts.upstream import PracticeConfigured
from shared.testing import assert_same_functions
from shared.topics import BILLING_EVENTS, BOOKING_EVENTS, UPSTREAM_PRACTICES

CHARGE = "ch-1"
FEE = {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}
LOWER = {"amount": "30.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}
LOWEST = {"amount": "20.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}
TOPICS = {
    PracticeConfigured: UPSTREAM_PRACTICES,
    BookingCancelled: BOOKING_EVENTS,
    ChargeCreated: BILLING_EVENTS,
    ChargeAdjusted: BILLING_EVENTS,
    ChargeWaived: BILLING_EVENTS,
}


class FakeFees:
    """The functions of pms_sync/fee_repository.py over the syncs of a FakeRepository."""

    def __init__(self, repo: FakeRepository) -> None:
        self.repo = repo
        self.charges: dict[str, dict[str, Any]] = {}

    async def lock_charge(self, conn: Any, charge_id: str) -> dict[str, Any] | None:
        charge = self.charges.get(charge_id)
        return dict(charge) if charge else None

    async def save_charge(
        self, conn: Any, charge_id: str, booking_id: str, state: str, fee: dict[str, Any] | None
    ) -> None:
        self.charges[charge_id] = {
            "charge_id": charge_id,
            "booking_id": booking_id,
            "state": state,
            "fee": json.dumps(fee) if fee is not None else None,
        }

    async def synced_booking(self, conn: Any, booking_id: str) -> dict[str, Any] | None:
        for sync in self.repo.syncs.values():  # insertion order: the oldest first
            if sync["booking_id"] == booking_id and sync["action"] in ("cancel_booking", "record_no_show"):
                return {k: sync[k] for k in ("practice_id", "integration", "topic")}
        return None

    async def supersede_fee_updates(self, conn: Any, booking_id: str, keep_sync_id: str) -> int:
        older = [
            s
            for s in self.repo.syncs.values()
            if s["booking_id"] == booking_id
            and s["action"] == "update_fee"
            and s["status"] in ("waiting", "sent")
            and s["sync_id"] != keep_sync_id
        ]
        for sync in older:
            sync |= {"status": "superseded", "next_retry_in": None}
        return len(older)


def test_the_fake_takes_what_fee_repository_py_takes() -> None:
    assert_same_functions(FakeFees(FakeRepository()), fee_repository)


@pytest.fixture
def repo() -> FakeRepository:
    return FakeRepository()


@pytest.fixture
def fake_fees(repo: FakeRepository) -> FakeFees:
    return FakeFees(repo)


Handle = Callable[..., Awaitable[list[tuple[str, str, str, dict[str, Any]]]]]


@pytest.fixture
def handle(unit_for: Callable[..., Unit[Any]], repo: FakeRepository, fake_fees: FakeFees) -> Handle:
    async def handle(
        handler: Callable[..., Awaitable[None]], payload: Payload, **envelope: Any
    ) -> list[tuple[str, str, str, dict[str, Any]]]:
        deps = PmsSyncDeps(settings=SETTINGS, repository=repo, fees=fake_fees)
        unit = unit_for("pms-sync", deps, TOPICS[type(payload)], payload, **envelope)
        await handler(unit, unit.event.payload)
        for event in unit.emitted:
            assert event.envelope.get("correlationid") == unit.event.correlation_id
        return [(e.topic, e.key, e.envelope["type"], e.envelope["data"]) for e in unit.emitted]

    return handle


def created(status: str | None, fee: dict[str, str] = FEE) -> ChargeCreated:
    return ChargeCreated.new(
        charge_id=CHARGE,
        booking_id=BOOKING,
        patient_id="pat-1",
        kind="late_cancellation",
        status=status,
        **fee,
    )


def adjusted(request_id: str, before: dict[str, str], after: dict[str, str]) -> ChargeAdjusted:
    return ChargeAdjusted.new(charge_id=CHARGE, request_id=request_id, before=before, after=after)


def waived(request_id: str = "waive-1") -> ChargeWaived:
    return ChargeWaived.new(charge_id=CHARGE, booking_id=BOOKING, request_id=request_id)


IN_REVIEW = {**cancelled().decision.to_json_dict(), "review_hours": 24}


async def cancelled_at_praktika(handle: Handle, *, review: bool) -> dict[str, Any]:
    """A cancellation synced to Praktika (system channel: it waits for no request); its command."""
    await handle(handlers.configure_practice, configured("praktika"))
    extra: dict[str, Any] = {"decision": IN_REVIEW} if review else {}
    [(topic, _, kind, command)] = await handle(handlers.sync_cancellation, cancelled(channel="system", **extra))
    assert (topic, kind) == (PRAKTIKA, "pms.cancel_booking")
    return command


def update(fee: dict[str, str] | None, cause: str) -> tuple[str, str, str, dict[str, Any]]:
    sync_id = domain.fee_update_sync_id(BOOKING, CHARGE, cause)
    data = {"sync_id": sync_id, "booking_id": BOOKING, "practice_id": PRACTICE, "charge_id": CHARGE, "fee": fee}
    return (PRAKTIKA, BOOKING, "pms.update_fee", data)


# --- a fee in review -----------------------------------------------------------------------------


async def test_a_fee_in_review_reaches_the_pms_once_it_is_final_with_the_edit_made_in_review(
    handle: Handle, repo: FakeRepository
) -> None:
    command = await cancelled_at_praktika(handle, review=True)
    assert "fee" not in command  # nobody is told of a fee before it is final

    assert await handle(fees.note_charge_created, created("pending_review")) == []
    assert await handle(fees.note_charge_adjusted, adjusted("edit-1", FEE, LOWER)) == []  # edited in review
    # approved: billing announces it due with the edited amount; now the PMS hears of it, once
    assert await handle(fees.note_charge_created, created("due", LOWER)) == [update(LOWER, "final")]
    assert await handle(fees.note_charge_created, created("due", LOWER)) == []  # a repeat
    sync = repo.syncs[domain.fee_update_sync_id(BOOKING, CHARGE, "final")]
    assert (sync["action"], sync["status"], sync["attempts"], sync["request_id"]) == ("update_fee", "sent", 1, CHARGE)


async def test_a_fee_waived_in_review_is_never_told(handle: Handle, repo: FakeRepository) -> None:
    await cancelled_at_praktika(handle, review=True)
    await handle(fees.note_charge_created, created("pending_review"))
    assert await handle(fees.note_charge_waived, waived()) == []
    assert await handle(fees.note_charge_created, created("due")) == []  # nothing revives a waived fee
    assert [s["action"] for s in repo.syncs.values()] == ["cancel_booking"]


# --- a final fee changed after the fact ----------------------------------------------------------


async def test_a_fee_due_at_once_went_with_the_cancellation_and_is_not_told_again(handle: Handle) -> None:
    command = await cancelled_at_praktika(handle, review=False)
    assert command["fee"] == FEE
    assert await handle(fees.note_charge_created, created("due")) == []
    assert await handle(fees.note_charge_created, created(None)) == []  # an older producer: due


async def test_a_final_fee_lowered_then_waived_is_told_each_time_once(handle: Handle, repo: FakeRepository) -> None:
    await cancelled_at_praktika(handle, review=False)
    await handle(fees.note_charge_created, created("due"))

    assert await handle(fees.note_charge_adjusted, adjusted("adj-1", FEE, LOWER)) == [update(LOWER, "adj-1")]
    assert await handle(fees.note_charge_adjusted, adjusted("adj-1", FEE, LOWER)) == []  # replayed: one sync
    assert await handle(fees.note_charge_waived, waived()) == [update(None, "waive-1")]
    assert await handle(fees.note_charge_waived, waived("waive-2")) == []  # waived already

    first = repo.syncs[domain.fee_update_sync_id(BOOKING, CHARGE, "adj-1")]
    assert first["status"] == "superseded" and first["next_retry_in"] is None  # never resent over the newer fee
    assert repo.syncs[domain.fee_update_sync_id(BOOKING, CHARGE, "waive-1")]["status"] == "sent"


async def test_a_fee_update_acknowledged_is_not_superseded(handle: Handle, repo: FakeRepository) -> None:
    await cancelled_at_praktika(handle, review=False)
    await handle(fees.note_charge_created, created("due"))
    await handle(fees.note_charge_adjusted, adjusted("adj-1", FEE, LOWER))
    first = domain.fee_update_sync_id(BOOKING, CHARGE, "adj-1")
    await repo.complete_sync(None, first, "pms-77")
    assert await handle(fees.note_charge_adjusted, adjusted("adj-2", LOWER, LOWEST)) == [update(LOWEST, "adj-2")]
    assert repo.syncs[first]["status"] == "completed"


@pytest.mark.parametrize("integration", ["none", "manual"])
async def test_a_booking_no_pms_was_sent_gets_no_fee_update(
    handle: Handle, repo: FakeRepository, integration: str
) -> None:
    await handle(handlers.configure_practice, configured(integration))
    await handle(handlers.sync_cancellation, cancelled(channel="system"))
    await handle(fees.note_charge_created, created("due"))
    assert await handle(fees.note_charge_adjusted, adjusted("adj-1", FEE, LOWER)) == []
    assert await handle(fees.note_charge_waived, waived()) == []
    assert repo.syncs == {}


async def test_an_adjustment_of_a_charge_never_seen_raised_is_not_told(handle: Handle, repo: FakeRepository) -> None:
    await cancelled_at_praktika(handle, review=False)
    assert await handle(fees.note_charge_adjusted, adjusted("adj-1", FEE, LOWER)) == []


async def test_a_waiver_of_a_charge_never_seen_raised_is_told(handle: Handle) -> None:
    # billing's events from before pms-sync read them: whatever the PMS holds, null is right
    await cancelled_at_praktika(handle, review=False)
    assert await handle(fees.note_charge_waived, waived()) == [update(None, "waive-1")]


# --- a fee update that fails -----------------------------------------------------------------


async def test_a_failed_fee_update_is_reported_failed_and_kept_for_staff_without_a_manual_update_event(
    handle: Handle, repo: FakeRepository
) -> None:
    await cancelled_at_praktika(handle, review=False)
    await handle(fees.note_charge_created, created("due"))
    await handle(fees.note_charge_adjusted, adjusted("adj-1", FEE, LOWER))
    sync = await repo.lock_sync(None, domain.fee_update_sync_id(BOOKING, CHARGE, "adj-1"))
    assert sync is not None
    published = await handlers.fail_sync(None, sync, "no acknowledgement after 5 attempts", repository=repo)  # type: ignore[arg-type]
    assert [p.event_type for p in published] == ["pms.sync_failed"]
    [manual] = repo.manual_updates
    assert manual["action"] == "update_fee" and manual["sync_id"] == sync["sync_id"]
    assert manual["message"] == (
        "Manual update required: change this booking's fee in Praktika too"
        " (Praktika did not confirm it: no acknowledgement after 5 attempts)"
    )

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
from collections import Counter
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
    """The functions of pms_sync/fee_repository.py over the syncs of a FakeRepository; `calls`
    counts the calls of each function (one call is one statement)."""

    def __init__(self, repo: FakeRepository) -> None:
        self.repo = repo
        self.charges: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()

    async def lock_charges(self, conn: Any, charge_ids: list[str]) -> dict[str, dict[str, Any]]:
        self.calls["lock_charges"] += 1
        return {c: dict(self.charges[c]) for c in charge_ids if c in self.charges}

    async def save_charges(self, conn: Any, charges: list[tuple[str, str, str, dict[str, Any] | None]]) -> None:
        self.calls["save_charges"] += 1
        assert len({c[0] for c in charges}) == len(charges), "the SQL upsert takes each charge once"
        for charge_id, booking_id, state, fee in charges:
            self.charges[charge_id] = {
                "charge_id": charge_id,
                "booking_id": booking_id,
                "state": state,
                "fee": json.dumps(fee) if fee is not None else None,
            }

    async def synced_bookings(self, conn: Any, booking_ids: list[str]) -> dict[str, dict[str, Any]]:
        self.calls["synced_bookings"] += 1
        found: dict[str, dict[str, Any]] = {}
        for sync in self.repo.syncs.values():  # insertion order: the oldest first
            if sync["booking_id"] in booking_ids and sync["action"] in ("cancel_booking", "record_no_show"):
                found.setdefault(sync["booking_id"], {k: sync[k] for k in ("practice_id", "integration", "topic")})
        return found

    async def supersede_fee_updates(self, conn: Any, keep: list[tuple[str, str]]) -> int:
        self.calls["supersede_fee_updates"] += 1
        assert len({b for b, _ in keep}) == len(keep), "one kept update per booking"
        kept = dict(keep)
        older = [
            s
            for s in self.repo.syncs.values()
            if s["booking_id"] in kept
            and s["action"] == "update_fee"
            and s["status"] in ("waiting", "sent")
            and s["sync_id"] != kept[s["booking_id"]]
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
    await repo.complete_syncs(None, [(first, "pms-77")])
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
    sync_id = domain.fee_update_sync_id(BOOKING, CHARGE, "adj-1")
    sync = (await repo.lock_syncs(None, [sync_id]))[sync_id]
    [published] = await handlers.fail_syncs(None, [(sync, "no acknowledgement after 5 attempts")], repository=repo)
    assert [p.event_type for p in published] == ["pms.sync_failed"]
    [manual] = repo.manual_updates
    assert manual["action"] == "update_fee" and manual["sync_id"] == sync["sync_id"]
    assert manual["message"] == (
        "Manual update required: change this booking's fee in Praktika too"
        " (Praktika did not confirm it: no acknowledgement after 5 attempts)"
    )


# --- sets: many charge events at once --------------------------------------------------------------

Published = list[list[tuple[str, str, str, dict[str, Any]]]]


def charge_created(i: int, booking: str, status: str | None, fee: dict[str, str] = FEE) -> ChargeCreated:
    return created(status, fee).model_copy(update={"charge_id": f"ch-{i}", "booking_id": booking})


def charge_adjusted(i: int, request_id: str, after: dict[str, str]) -> ChargeAdjusted:
    return adjusted(request_id, FEE, after).model_copy(update={"charge_id": f"ch-{i}"})


def charge_waived(i: int, booking: str, request_id: str) -> ChargeWaived:
    return waived(request_id).model_copy(update={"charge_id": f"ch-{i}", "booking_id": booking})


class Fees:
    """A world of bookings synced (or not) and their charges, run as sets or one by one."""

    def __init__(self, unit_for: Callable[..., Unit[Any]]) -> None:
        self.unit_for = unit_for
        self.repo = FakeRepository()
        self.fees = FakeFees(self.repo)

    async def run(self, handler: Any, payloads: list[Payload], *, together: bool, first: int = 0) -> Published:
        if not together:
            return [(await self.run(handler, [p], together=True, first=first + i))[0] for i, p in enumerate(payloads)]
        deps = PmsSyncDeps(settings=SETTINGS, repository=self.repo, fees=self.fees)
        units = [
            self.unit_for("pms-sync", deps, TOPICS[type(p)], p, correlation_id=f"c-{i}")
            for i, p in enumerate(payloads, start=first)
        ]
        if hasattr(handler, "handle_many"):
            await handler.handle_many(units, [u.event.payload for u in units])
        else:  # a handler that is not set-based (configure_practice)
            for unit in units:
                await handler(unit, unit.event.payload)
        return [[(e.topic, e.key, e.envelope["type"], e.envelope["data"]) for e in u.emitted] for u in units]

    async def bookings(self, n: int) -> None:
        """Per i: b-rev-i (Praktika, its fee in review), b-due-i (Praktika, its fee went with the
        cancellation), b-man-i (a manual practice: never synced)."""
        await self.run(handlers.configure_practice, [configured("praktika")], together=True, first=-1)
        manual = configured("manual").model_copy(update={"practice_id": "prac-manual"})
        await self.run(handlers.configure_practice, [manual], together=True, first=-2)
        for i in range(n):
            review = cancelled(booking_id=f"b-rev-{i}", channel="system", decision=IN_REVIEW)
            due = cancelled(booking_id=f"b-due-{i}", channel="system")
            by_hand = cancelled(booking_id=f"b-man-{i}", channel="system", practice_id="prac-manual")
            await self.run(handlers.sync_cancellation, [review, due, by_hand], together=True, first=-10)

    def state(self) -> tuple[Any, ...]:
        return self.fees.charges, {k: s | {"next_retry_in": None} for k, s in self.repo.syncs.items()}


def fee_sets(n: int) -> list[tuple[Any, list[Payload]]]:
    """Three sets (created, adjusted, waived) crossing every branch, n charges of each kind."""
    created_ = [
        payload
        for i in range(n)
        for payload in (
            charge_created(3 * i, f"b-rev-{i}", "pending_review"),  # in review: noted only
            charge_created(3 * i + 1, f"b-due-{i}", "due"),  # due at once: went with the cancellation
            charge_created(3 * i + 2, f"b-man-{i}", "due"),  # a booking never synced
        )
    ]
    approved = [charge_created(3 * i, f"b-rev-{i}", "due", LOWER) for i in range(n)]  # final: told
    adjusted_ = [
        payload
        for i in range(n)
        for payload in (
            charge_adjusted(3 * i, f"adj-{i}", LOWEST),  # told, supersedes the final one
            charge_adjusted(3 * i + 1, f"adj-{i}", LOWER),  # told
            charge_adjusted(3 * i + 2, f"adj-{i}", LOWER),  # a booking never synced: nothing
            charge_adjusted(1000 + i, f"adj-{i}", LOWER),  # a charge never seen: nothing
        )
    ]
    waived_ = [charge_waived(3 * i + 1, f"b-due-{i}", f"w-{i}") for i in range(n)]  # told: null
    return [
        (fees.note_charge_created, created_),
        (fees.note_charge_created, approved),
        (fees.note_charge_adjusted, adjusted_),
        (fees.note_charge_waived, waived_),
    ]


@pytest.mark.parametrize("n", [1, 4])
async def test_a_set_of_charge_events_costs_one_call_of_each_kind_and_each_record_publishes_its_own(
    unit_for: Callable[..., Unit[Any]], n: int
) -> None:
    world = Fees(unit_for)
    await world.bookings(n)
    [created_, approved, adjusted_, waived_] = fee_sets(n)

    world.fees.calls.clear()
    assert await world.run(*created_, together=True) == [[]] * 3 * n
    assert world.fees.calls == Counter(lock_charges=1, save_charges=1)  # nothing to tell: no more

    world.fees.calls.clear()
    world.repo.calls.clear()
    told = await world.run(*approved, together=True)
    assert [[(key, type_, data["fee"]) for _, key, type_, data in p] for p in told] == [
        [(f"b-rev-{i}", "pms.update_fee", LOWER)] for i in range(n)
    ]
    assert world.fees.calls == Counter(lock_charges=1, save_charges=1, synced_bookings=1, supersede_fee_updates=1)
    assert world.repo.calls == Counter(add_syncs=1)

    world.fees.calls.clear()
    world.repo.calls.clear()
    told = await world.run(*adjusted_, together=True)
    expected: Published = []
    for i in range(n):
        expected += [
            [(PRAKTIKA, f"b-rev-{i}", "pms.update_fee", update_of(f"b-rev-{i}", 3 * i, f"adj-{i}", LOWEST))],
            [(PRAKTIKA, f"b-due-{i}", "pms.update_fee", update_of(f"b-due-{i}", 3 * i + 1, f"adj-{i}", LOWER))],
            [],
            [],
        ]
    assert told == expected
    assert world.fees.calls == Counter(lock_charges=1, save_charges=1, synced_bookings=1, supersede_fee_updates=1)
    assert world.repo.calls == Counter(add_syncs=1)
    for i in range(n):  # the approved fee is never resent over the adjusted one
        assert world.repo.syncs[domain.fee_update_sync_id(f"b-rev-{i}", f"ch-{3 * i}", "final")]["status"] == (
            "superseded"
        )

    world.fees.calls.clear()
    told = await world.run(*waived_, together=True)
    assert [[(key, data["fee"]) for _, key, _, data in p] for p in told] == [[(f"b-due-{i}", None)] for i in range(n)]
    assert world.fees.calls == Counter(lock_charges=1, save_charges=1, synced_bookings=1, supersede_fee_updates=1)


def update_of(booking: str, charge: int, cause: str, fee: dict[str, str] | None) -> dict[str, Any]:
    sync_id = domain.fee_update_sync_id(booking, f"ch-{charge}", cause)
    return {"sync_id": sync_id, "booking_id": booking, "practice_id": PRACTICE, "charge_id": f"ch-{charge}", "fee": fee}


async def test_a_set_of_charge_events_does_what_the_records_do_one_by_one_even_naming_a_charge_twice(
    unit_for: Callable[..., Unit[Any]],
) -> None:
    together, alone = Fees(unit_for), Fees(unit_for)
    await together.bookings(3)
    await alone.bookings(3)
    sets = fee_sets(3)
    # Billing keys its events by booking, so a set names a charge once; twice all the same (two
    # keys), the later sees what the earlier saved: approved again (a repeat), adjusted twice.
    sets[1] = (sets[1][0], [*sets[1][1], charge_created(0, "b-rev-0", "due", LOWER)])
    sets[2] = (sets[2][0], [*sets[2][1], charge_adjusted(1, "adj-again", LOWEST)])
    # two charges of one booking waived in one set: the later update supersedes the earlier
    sets[3] = (sets[3][0], [*sets[3][1], charge_waived(99, "b-due-1", "w-other")])
    for handler, payloads in sets:
        assert await together.run(handler, payloads, together=True) == await alone.run(
            handler, payloads, together=False
        )
        assert together.state() == alone.state()
    # the second adjustment of ch-1 was told and superseded the first
    assert alone.repo.syncs[domain.fee_update_sync_id("b-due-0", "ch-1", "adj-0")]["status"] == "superseded"
    open_updates = [
        s
        for s in alone.repo.syncs.values()
        if s["booking_id"] == "b-due-1" and s["action"] == "update_fee" and s["status"] == "sent"
    ]
    assert [s["sync_id"] for s in open_updates] == [domain.fee_update_sync_id("b-due-1", "ch-99", "w-other")]

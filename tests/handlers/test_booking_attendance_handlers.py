"""booking's second-release handlers (attendance.py) against the in-memory repository: an
arrival recorded once and only for a scheduled booking, an offer acceptance filling the slot
once and refusing (audited) what is not the live offer, a reinstatement ending the remembered
suspension, and the sweep's settings kept with the practice."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from test_booking_handlers import BOOKING, NOW, PRACTICE, PROFESSIONAL, FakeRepository, T, scheduled

from booking import attendance, repository
from booking.handlers import BookingDeps
from shared.consumer import Unit
from shared.contracts.base import Payload
from shared.contracts.scoring import AccountReinstated
from shared.contracts.upstream import BookingArrived, PracticeConfigured, WaitlistOfferAccepted
from shared.testing import assert_same_functions
from shared.topics import SCORING_EVENTS, UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES


class FakeAttendanceRepository(FakeRepository):
    async def upsert_practice(self, conn: Any, practice_id: str, waitlist_enabled: bool, offer_minutes: int) -> None:
        # As the SQL's ON CONFLICT DO UPDATE: the sweep's columns stay.
        kept = self.practices.get(practice_id, {})
        await super().upsert_practice(conn, practice_id, waitlist_enabled, offer_minutes)
        self.practices[practice_id] = kept | self.practices[practice_id]

    async def set_no_show_sweep(
        self, conn: Any, practice_id: str, *, enabled: bool, grace_minutes: int, at: datetime
    ) -> None:
        row = self.practices[practice_id]
        since = row.get("no_show_sweep_since") if row.get("no_show_sweep_enabled") else None
        row.update(
            no_show_sweep_enabled=enabled,
            no_show_grace_minutes=grace_minutes,
            no_show_sweep_since=(since or at) if enabled else None,
        )

    async def mark_arrived(self, conn: Any, booking_id: str, arrived_at: datetime) -> bool:
        booking = self.bookings[booking_id]
        if booking.get("arrived_at") is not None:
            return False
        booking["arrived_at"] = arrived_at
        return True

    async def lock_offer(self, conn: Any, offer_id: str) -> dict[str, Any] | None:
        offer = self.offers.get(offer_id)
        return dict(offer, filled_at=offer.get("filled_at")) if offer else None

    async def fill_offer(self, conn: Any, offer_id: str, *, new_booking_id: str, at: datetime) -> None:
        offer = self.offers[offer_id]
        offer.update(status="accepted", new_booking_id=new_booking_id, filled_at=at)
        self.waitlist[offer["waitlist_id"]]["status"] = "booked"

    async def end_suspension(self, conn: Any, professional_id: str, reinstated_at: datetime) -> bool:
        known = self.suspensions.get(professional_id)
        if known is None or known["suspended_at"] > reinstated_at:
            return False
        del self.suspensions[professional_id]
        return True


TOPICS = {
    BookingArrived: UPSTREAM_BOOKINGS,
    WaitlistOfferAccepted: UPSTREAM_BOOKINGS,
    PracticeConfigured: UPSTREAM_PRACTICES,
    AccountReinstated: SCORING_EVENTS,
}
Handle = Callable[..., Awaitable[list[tuple[str, str, dict[str, Any]]]]]


@pytest.fixture
def repo() -> FakeAttendanceRepository:
    return FakeAttendanceRepository()


@pytest.fixture
def handle(unit_for: Callable[..., Unit[Any]], repo: FakeAttendanceRepository) -> Handle:
    async def handle(handler: Any, payload: Payload, **envelope: Any) -> list[tuple[str, str, dict[str, Any]]]:
        envelope.setdefault("time", NOW)
        envelope.setdefault("subject", getattr(payload, "booking_id", None) or BOOKING)
        unit = unit_for("booking", BookingDeps(repository=repo), TOPICS[type(payload)], payload, **envelope)
        await handler(unit, unit.event.payload)
        return [(e.key, e.envelope["type"], e.envelope["data"]) for e in unit.emitted]

    return handle


def test_the_fake_takes_what_repository_py_takes() -> None:
    assert_same_functions(FakeAttendanceRepository(), repository)


def actions(repo: FakeRepository) -> list[str]:
    return [e["action"] for e in repo.trail if e["booking_id"] == BOOKING]


async def test_an_arrival_is_recorded_once(repo: FakeAttendanceRepository, handle: Handle) -> None:
    await repo.insert_booking(None, {"booking_id": BOOKING, **_booking_fields()})
    arrived = BookingArrived.new(booking_id=BOOKING, arrived_at=T - timedelta(minutes=5))
    assert await handle(attendance.record_arrival, arrived) == []
    assert await handle(attendance.record_arrival, arrived) == []
    assert repo.bookings[BOOKING]["arrived_at"] == T - timedelta(minutes=5)
    assert actions(repo) == ["arrived"]


async def test_an_arrival_at_a_closed_booking_is_only_audited_and_an_unknown_one_refused(
    repo: FakeAttendanceRepository, handle: Handle
) -> None:
    await repo.insert_booking(None, {"booking_id": BOOKING, **_booking_fields()})
    repo.bookings[BOOKING]["status"] = "cancelled"
    await handle(attendance.record_arrival, BookingArrived.new(booking_id=BOOKING, arrived_at=T))
    assert actions(repo) == ["arrival_ignored"] and repo.bookings[BOOKING].get("arrived_at") is None
    with pytest.raises(LookupError):
        await handle(attendance.record_arrival, BookingArrived.new(booking_id="bk-unknown", arrived_at=T))


def _booking_fields() -> dict[str, Any]:
    fields = scheduled().model_dump()
    return {
        "practice_id": PRACTICE,
        "practitioner_id": fields["practitioner_id"],
        "service_code": fields["service_code"],
        "starts_at": T,
        "ends_at": T + timedelta(minutes=30),
        "patient_id": "pat-1",
        "patient_portal_account": True,
        "patient_card_on_file": False,
        "professional_id": None,
        "series_id": None,
        "deposit_amount": None,
        "deposit_currency": None,
        "price_amount": None,
        "price_currency": None,
    }


async def _offered(repo: FakeAttendanceRepository) -> None:
    await repo.insert_booking(None, {"booking_id": BOOKING, **_booking_fields()})
    await repo.join_waitlist(None, {"waitlist_id": "wl-1", "practice_id": PRACTICE, "patient_id": "pat-9"})
    await repo.add_offer(None, "offer-1", BOOKING, "wl-1", NOW, NOW + timedelta(minutes=30))


def accepted(at: datetime, **overrides: Any) -> WaitlistOfferAccepted:
    return WaitlistOfferAccepted.new(
        **({"offer_id": "offer-1", "waitlist_id": "wl-1", "new_booking_id": "bk-new", "accepted_at": at} | overrides)
    )


async def test_the_live_offer_accepted_fills_the_slot_once(repo: FakeAttendanceRepository, handle: Handle) -> None:
    await _offered(repo)
    first = await handle(attendance.fill_slot, accepted(NOW + timedelta(minutes=10)))
    again = await handle(attendance.fill_slot, accepted(NOW + timedelta(minutes=10)))
    assert first == [
        (
            BOOKING,
            "booking.slot_filled",
            {"offer_id": "offer-1", "booking_id": BOOKING, "new_booking_id": "bk-new", "waitlist_id": "wl-1"},
        )
    ]
    assert again == []
    assert repo.offers["offer-1"]["status"] == "accepted" and repo.waitlist["wl-1"]["status"] == "booked"
    assert actions(repo) == ["slot_filled"]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (accepted(NOW + timedelta(minutes=31)), "not_live"),  # after its expiry
        (accepted(NOW, waitlist_id="wl-2"), "unknown_offer"),  # not this patient's offer
    ],
)
async def test_an_acceptance_that_is_not_the_live_offer_is_audited_and_fills_nothing(
    repo: FakeAttendanceRepository, handle: Handle, event: WaitlistOfferAccepted, reason: str
) -> None:
    await _offered(repo)
    assert await handle(attendance.fill_slot, event) == []
    [refused] = [e for e in repo.trail if e["action"] == "offer_acceptance_refused"]
    assert refused["detail"]["reason"] == reason
    assert repo.offers["offer-1"]["status"] == "open"


async def test_a_reinstatement_ends_the_remembered_suspension(repo: FakeAttendanceRepository, handle: Handle) -> None:
    await repo.record_suspension(None, PROFESSIONAL, NOW - timedelta(days=1), "ev-1")
    await handle(attendance.end_suspension, AccountReinstated.new(professional_id=PROFESSIONAL, reinstated_at=NOW))
    assert await repo.suspension_of(None, PROFESSIONAL) is None


async def test_the_sweep_settings_are_kept_with_the_practice_and_since_when_it_is_on(
    repo: FakeAttendanceRepository, handle: Handle
) -> None:
    def configured(enabled: bool) -> PracticeConfigured:
        return PracticeConfigured.new(
            practice_id=PRACTICE,
            name="Harbour",
            timezone="UTC",
            locale="en",
            no_show_sweep={"enabled": enabled, "grace_minutes": 10},
        )

    await handle(attendance.configure_practice, configured(True), time=NOW, subject=PRACTICE)
    await handle(attendance.configure_practice, configured(True), time=NOW + timedelta(days=1), subject=PRACTICE)
    assert repo.practices[PRACTICE]["no_show_sweep_since"] == NOW  # kept while it stays on
    assert repo.practices[PRACTICE]["no_show_grace_minutes"] == 10
    await handle(attendance.configure_practice, configured(False), time=NOW + timedelta(days=2), subject=PRACTICE)
    assert repo.practices[PRACTICE]["no_show_sweep_since"] is None

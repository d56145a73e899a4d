"""Booking's second release with booking and cancellation-policy as real processes on the real
broker: the no-show sweep reports an unattended booking once (not one that arrived or was
completed), an accepted waitlist offer fills the slot once with no release and no further offer,
and a reinstatement stops the cancelling of the professional's bookings."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_booking_flows import STAFF, Practice

from shared.testing import EventWatcher, ServiceProcess, iso, unique, wait_for_row
from shared.topics import BOOKING_EVENTS, POLICY_DECISIONS, SCORING_EVENTS, UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES

pytestmark = pytest.mark.integration

H = timedelta(hours=1)


@pytest.fixture(scope="module")
def services(infra, tmp_path_factory):
    logs = tmp_path_factory.mktemp("booking-attendance-logs")
    fast = {"OFFER_CHECK_INTERVAL_SECONDS": "0.3", "NO_SHOW_SWEEP_INTERVAL_SECONDS": "0.3"}
    procs = [
        ServiceProcess("cancellation-policy", infra.bootstrap, infra.admin_dsn, logs).start(),
        ServiceProcess("booking", infra.bootstrap, infra.admin_dsn, logs, env=fast).start(),
    ]
    yield {p.service: p for p in procs}
    for p in procs:
        p.stop()


@pytest.fixture
async def practice(services, infra, publisher):
    async with EventWatcher(infra.bootstrap, [BOOKING_EVENTS, POLICY_DECISIONS]) as watcher:
        yield Practice(publisher, watcher)


async def practice_known(infra: Any, practice: Practice, column: str = "waitlist_enabled") -> None:
    await wait_for_row(
        infra.admin_dsn, f"SELECT 1 FROM booking.practices WHERE practice_id = $1 AND {column}", practice.practice_id
    )


async def test_the_sweep_reports_an_unattended_booking_once(practice, infra):
    await practice.configure(no_show_sweep={"enabled": True, "grace_minutes": 0})
    await practice_known(infra, practice, "no_show_sweep_enabled")
    unattended = await practice.book(timedelta(seconds=3))
    arrived = await practice.book(timedelta(seconds=3))
    completed = await practice.book(timedelta(seconds=3))
    await practice.publisher.event(
        UPSTREAM_BOOKINGS, "booking.arrived", arrived, {"booking_id": arrived, "arrived_at": iso(datetime.now(UTC))}
    )
    await practice.publisher.event(
        UPSTREAM_BOOKINGS,
        "booking.completed",
        completed,
        {"booking_id": completed, "completed_at": iso(datetime.now(UTC))},
    )
    [suspected] = await practice.watcher.wait_for(
        lambda s: s.type == "booking.no_show_suspected" and s.key == unattended, timeout=30
    )
    await practice.watcher.settle(2.0)
    every = practice.watcher.matching(
        lambda s: s.type == "booking.no_show_suspected" and s.key in (unattended, arrived, completed)
    )

    assert suspected.data == {
        "booking_id": unattended,
        "practice_id": practice.practice_id,
        "starts_at": suspected.data["starts_at"],
        "grace_minutes": 0,
    }
    assert suspected.value["time"] == suspected.data["starts_at"]  # at start + grace, not when the sweep ran
    assert len(every) == 1
    # Nothing is charged or recorded: the booking stays scheduled for staff to confirm.
    assert not practice.watcher.matching(lambda s: s.key == unattended and s.type == "booking.no_show_recorded")


async def test_an_accepted_offer_fills_the_slot_once_without_release(practice, infra):
    await practice.configure(waitlist={"enabled": True, "offer_minutes": 1})
    await practice_known(infra, practice)
    waitlist_id = unique("wait")
    await practice.publisher.event(
        UPSTREAM_PRACTICES,
        "waitlist.joined",
        practice.practice_id,
        {
            "waitlist_id": waitlist_id,
            "practice_id": practice.practice_id,
            "service_code": "D1110",
            "patient": {
                "patient_id": unique("patient"),
                "first_name": "Wai",
                "portal_account": True,
                "card_on_file": False,
            },
            "joined_at": iso(datetime.now(UTC) - timedelta(days=1)),
        },
    )
    await wait_for_row(infra.admin_dsn, "SELECT 1 FROM booking.waitlist WHERE waitlist_id = $1", waitlist_id)
    booking_id = await practice.book(30 * H)
    # Cancelled "50 s ago": the 1-minute offer would expire within seconds if it were not taken.
    at = datetime.now(UTC) - timedelta(seconds=50)
    await practice.outcome(await practice.cancel(booking_id, STAFF, "practice", at=at))
    [offer] = await practice.watcher.wait_for(lambda s: s.type == "booking.slot_offered" and s.key == booking_id)
    new_booking_id = unique("booking")
    accepted = {
        "offer_id": offer.data["offer_id"],
        "waitlist_id": waitlist_id,
        "new_booking_id": new_booking_id,
        "accepted_at": iso(datetime.now(UTC)),
    }
    for _ in range(2):  # the acceptance twice (a retry upstream): filled once
        await practice.publisher.event(UPSTREAM_BOOKINGS, "waitlist.offer_accepted", booking_id, accepted)
    [filled] = await practice.watcher.wait_for(lambda s: s.type == "booking.slot_filled" and s.key == booking_id)
    await practice.watcher.settle(15.0)  # past the offer's expiry: nothing expires, nothing is released
    after = practice.watcher.matching(
        lambda s: (
            s.key == booking_id and s.type in ("booking.slot_filled", "booking.slot_released", "booking.slot_offered")
        )
    )

    assert filled.data == {
        "offer_id": offer.data["offer_id"],
        "booking_id": booking_id,
        "new_booking_id": new_booking_id,
        "waitlist_id": waitlist_id,
    }
    assert [s.type for s in after] == ["booking.slot_offered", "booking.slot_filled"]


async def test_a_reinstated_professionals_bookings_are_no_longer_cancelled(practice, infra):
    professional_id = unique("pro")
    suspended_at = datetime.now(UTC) - timedelta(minutes=5)
    await practice.publisher.event(
        SCORING_EVENTS,
        "account.suspended",
        professional_id,
        {"professional_id": professional_id, "holds": [unique("hold")], "suspended_at": iso(suspended_at)},
        source="service/scoring",
    )
    await wait_for_row(
        infra.admin_dsn, "SELECT 1 FROM booking.suspended_professionals WHERE professional_id = $1", professional_id
    )
    while_suspended = await practice.book(20 * H, professional_id=professional_id)
    await practice.watcher.wait_for(lambda s: s.type == "booking.cancelled" and s.key == while_suspended)
    await practice.publisher.event(
        SCORING_EVENTS,
        "account.reinstated",
        professional_id,
        {"professional_id": professional_id, "reinstated_at": iso(datetime.now(UTC))},
        source="service/scoring",
    )
    for _ in range(100):
        if not await _suspended(infra, professional_id):
            break
        await asyncio.sleep(0.1)
    after = await practice.book(20 * H, professional_id=professional_id)
    await wait_for_row(infra.admin_dsn, "SELECT 1 FROM booking.bookings WHERE booking_id = $1", after)
    await practice.watcher.settle(2.0)
    assert not practice.watcher.matching(lambda s: s.type == "booking.cancelled" and s.key == after)


async def _suspended(infra: Any, professional_id: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(infra.admin_dsn)
    try:
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM booking.suspended_professionals WHERE professional_id = $1)",
                professional_id,
            )
        )
    finally:
        await conn.close()

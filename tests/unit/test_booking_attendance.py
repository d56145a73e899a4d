"""Table tests of booking's second-release rules (docs/rules.md#no-show-sweep, #waitlist-and-slot-release):
the sweep's timing at its edges and what stops it, and which offer acceptance fills a slot. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from booking.domain import no_show_suspected, offer_acceptance, sweep_due_at

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
M = timedelta(minutes=1)
S = timedelta(seconds=1)
SINCE = START - timedelta(days=1)


@pytest.mark.parametrize(
    ("now", "grace", "kw", "suspected"),
    [
        (START + 15 * M - S, 15, {}, False),  # a second before start + grace: not yet
        (START + 15 * M, 15, {}, True),  # at start + grace exactly
        (START + 16 * M, 15, {}, True),
        (START, 0, {}, True),  # no grace: at the start
        (START - S, 0, {}, False),
        (START + 60 * M, 15, {"arrived": True}, False),
        (START + 60 * M, 15, {"status": "completed"}, False),
        (START + 60 * M, 15, {"status": "cancelled"}, False),
        (START + 60 * M, 15, {"status": "no_show"}, False),
        (START + 60 * M, 15, {"suspected_before": True}, False),  # reported once
        (START + 60 * M, 15, {"sweep_since": None}, False),  # the practice does not sweep
        (START + 60 * M, 15, {"sweep_since": START + S}, False),  # started before the sweep was on
        (START + 60 * M, 15, {"sweep_since": START}, True),  # started as the sweep came on
        (START + 24 * 60 * M, 1440, {}, True),  # the longest grace
    ],
)
def test_the_sweep_at_its_edges(now, grace, kw, suspected):
    args = {
        "status": "scheduled",
        "starts_at": START,
        "grace_minutes": grace,
        "arrived": False,
        "suspected_before": False,
        "sweep_since": SINCE,
        "now": now,
    } | kw
    assert no_show_suspected(**args) is suspected


def test_a_booking_becomes_due_at_its_start_plus_grace():
    assert sweep_due_at(START, 15) == START + 15 * M


EXPIRES = START + 30 * M


@pytest.mark.parametrize(
    ("offer", "accepted_at", "answer"),
    [
        ({"offer_status": "open"}, EXPIRES - S, "fill"),
        ({"offer_status": "open"}, EXPIRES, "fill"),  # accepted at its expiry: still live
        ({"offer_status": "open"}, EXPIRES + S, "not_live"),
        ({"offer_status": "expired"}, EXPIRES - S, "not_live"),  # the next patient has it already
        ({"offer_status": "accepted"}, EXPIRES + M, "fill"),  # the patient's new booking took it first
        ({"offer_status": "open", "filled": True}, EXPIRES - S, "filled_already"),
        ({"offer_status": None}, EXPIRES - S, "unknown_offer"),
        ({"offer_status": "open", "offer_booking_id": "bk-other"}, EXPIRES - S, "unknown_offer"),
        ({"offer_status": "open", "offer_waitlist_id": "wl-other"}, EXPIRES - S, "unknown_offer"),
    ],
)
def test_which_acceptance_fills_the_slot(offer, accepted_at, answer):
    args = {
        "offer_booking_id": "bk-1",
        "offer_waitlist_id": "wl-1",
        "expires_at": EXPIRES,
        "filled": False,
        "booking_id": "bk-1",
        "waitlist_id": "wl-1",
        "accepted_at": accepted_at,
    } | offer
    assert offer_acceptance(**args) == answer

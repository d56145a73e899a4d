"""Booking and cancellation-policy as real processes on the real broker: every path of
docs/rules.md#who-may-cancel-and-when, series, no-shows, the waitlist and suspension."""

from __future__ import annotations

import asyncio
import json
import urllib.error
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.testing import EventWatcher, ServiceProcess, dev_token, iso, unique, wait_for_row
from shared.topics import BOOKING_EVENTS, POLICY_DECISIONS, SCORING_EVENTS, UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES

TOPICS = [BOOKING_EVENTS, POLICY_DECISIONS, "dlq.booking.v1"]


@pytest.fixture(scope="module")
def services(infra, tmp_path_factory):
    logs = tmp_path_factory.mktemp("booking-flow-logs")
    procs = [
        ServiceProcess("cancellation-policy", infra.bootstrap, infra.admin_dsn, logs).start(),
        ServiceProcess(
            "booking", infra.bootstrap, infra.admin_dsn, logs, env={"OFFER_CHECK_INTERVAL_SECONDS": "0.3"}
        ).start(),
    ]
    yield {p.service: p for p in procs}
    for p in procs:
        p.stop()


class Practice:
    """One test's practice: books, cancels and reports against the real services."""

    def __init__(self, publisher, watcher: EventWatcher) -> None:
        self.publisher = publisher
        self.watcher = watcher
        self.practice_id = unique("practice")

    async def configure(self, **settings: Any) -> None:
        await self.publisher.event(
            UPSTREAM_PRACTICES,
            "practice.configured",
            self.practice_id,
            {
                "practice_id": self.practice_id,
                "name": "Harbour Dental",
                "timezone": "Australia/Sydney",
                "locale": "en",
                **settings,
            },
        )

    async def book(self, starts_in: timedelta, **extra: Any) -> str:
        booking_id = extra.pop("booking_id", None) or unique("booking")
        starts = datetime.now(UTC) + starts_in
        patient = {
            "patient_id": unique("patient"),
            "first_name": "Ann",
            "email": "ann@example.com",
            "portal_account": True,
            "card_on_file": True,
        } | extra.pop("patient", {})
        await self.publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.scheduled",
            booking_id,
            {
                "booking_id": booking_id,
                "practice_id": self.practice_id,
                "starts_at": iso(starts),
                "ends_at": iso(starts + timedelta(minutes=30)),
                "practitioner_id": extra.pop("practitioner_id", "dr-lee"),
                "service_code": extra.pop("service_code", "D1110"),
                "patient": patient,
                **extra,
            },
        )
        return booking_id

    async def cancel(self, booking_id: str, actor: dict[str, Any], channel: str, **extra: Any) -> str:
        request_id = unique("request")
        await self.publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.cancellation_requested",
            booking_id,
            {
                "request_id": request_id,
                "booking_id": booking_id,
                "requested_at": iso(extra.pop("at", datetime.now(UTC))),
                "actor": actor,
                "channel": channel,
                **extra,
            },
        )
        return request_id

    async def outcome(self, request_id: str, timeout: float = 30) -> Any:
        """The booking's answer to one request: cancelled, no-show recorded, or a rejection."""
        found = await self.watcher.wait_for(
            lambda s: s.topic == BOOKING_EVENTS and s.data.get("request_id") == request_id, timeout=timeout
        )
        return found[0]


PATIENT = {"kind": "patient", "id": "pat-1", "roles": []}
STAFF = {"kind": "staff", "id": "staff-1", "roles": ["reception"]}
H = timedelta(hours=1)


@pytest.fixture
async def practice(services, infra, publisher):
    async with EventWatcher(infra.bootstrap, TOPICS) as watcher:
        yield Practice(publisher, watcher)


async def test_patient_cancels_online_and_gets_the_online_label(practice):
    booking_id = await practice.book(72 * H)
    event = await practice.outcome(
        await practice.cancel(booking_id, PATIENT, "patient_portal", reason_code="transport")
    )
    assert event.type == "booking.cancelled"
    assert event.data["status_label"] == "Cancelled online"
    assert event.data["classification"] == "timely"
    assert event.data["decision"]["policy_version"] == "r1.s0"
    assert event.key == booking_id


async def test_patient_inside_48_hours_is_told_to_contact_the_practice(practice):
    booking_id = await practice.book(30 * H)
    event = await practice.outcome(await practice.cancel(booking_id, PATIENT, "patient_portal"))
    assert event.type == "booking.cancellation_rejected"
    assert event.data["reason"] == "within_online_cutoff"
    assert "contact the practice" in event.data["message"] and "48 hours" in event.data["message"]


@pytest.mark.parametrize(
    ("starts_in", "type_", "detail"),
    [
        (30 * H, "booking.cancelled", "timely"),
        (5 * H, "booking.cancelled", "late"),
        (-10 * timedelta(minutes=1), "booking.cancellation_rejected", "appointment_started"),
    ],
)
async def test_staff_cancellations(practice, starts_in, type_, detail):
    booking_id = await practice.book(starts_in)
    event = await practice.outcome(
        await practice.cancel(booking_id, STAFF, "practice", reason_code="illness", reason_text="Flu")
    )
    assert event.type == type_
    if type_ == "booking.cancelled":
        assert event.data["classification"] == detail
        assert event.data["status_label"] == "Cancelled"
        assert event.data["reason_text"] == "Flu"
    else:
        assert event.data["reason"] == detail and "no-show" in event.data["message"]


@pytest.mark.parametrize(
    ("starts_in", "classification", "delta", "hold"),
    [(30 * H, "timely", -10, None), (5 * H, "late", -50, 7), (timedelta(minutes=45), "no_show", -100, 14)],
)
async def test_professional_cancellations(practice, starts_in, classification, delta, hold):
    professional_id = unique("pro")
    booking_id = await practice.book(starts_in, professional_id=professional_id)
    actor = {"kind": "professional", "id": professional_id, "roles": []}
    event = await practice.outcome(await practice.cancel(booking_id, actor, "professional_app"))
    assert event.type == "booking.cancelled"
    assert event.data["classification"] == classification
    assert (event.data["decision"]["score_delta"], event.data["decision"].get("hold_days")) == (delta, hold)
    released = await practice.watcher.wait_for(lambda s: s.type == "booking.slot_released" and s.key == booking_id)
    assert released[0].data["practice_id"] == practice.practice_id


async def test_another_professional_may_not_cancel(practice):
    booking_id = await practice.book(30 * H, professional_id=unique("pro"))
    intruder = {"kind": "professional", "id": unique("pro"), "roles": []}
    event = await practice.outcome(await practice.cancel(booking_id, intruder, "professional_app"))
    assert event.data["reason"] == "not_allowed"


async def test_series_cancels_this_and_every_later_occurrence(practice):
    series_id = unique("series")
    ids = [await practice.book((30 + 24 * 7 * week) * H, series_id=series_id) for week in range(4)]
    request_id = await practice.cancel(ids[1], STAFF, "practice", scope="this_and_future")
    event = await practice.outcome(request_id)
    assert event.type == "booking.cancelled"
    assert event.data["series_booking_ids"] == ids[2:]
    # The first occurrence is untouched: it can still be cancelled on its own.
    first = await practice.outcome(await practice.cancel(ids[0], STAFF, "practice"))
    assert first.type == "booking.cancelled"
    again = await practice.outcome(await practice.cancel(ids[3], STAFF, "practice"))
    assert again.data["reason"] == "already_cancelled"


async def test_no_show_with_a_fee_and_one_reported_too_early(practice):
    await practice.configure(
        fees={
            "no_show": {"amount": "60.00", "currency": "AUD", "code": "D9986", "code_system": "CDT"},
            "charge_card_on_file": True,
        }
    )
    started = await practice.book(-20 * timedelta(minutes=1), deposit={"amount": "20.00", "currency": "AUD"})
    future = await practice.book(3 * H)
    answers = {}
    for booking_id in (started, future):
        request_id = unique("request")
        await practice.publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.no_show_reported",
            booking_id,
            {
                "request_id": request_id,
                "booking_id": booking_id,
                "reported_at": iso(datetime.now(UTC)),
                "actor": STAFF,
                "party": "patient",
                "code": "FTA",
            },
        )
        answers[booking_id] = await practice.outcome(request_id)
    recorded = answers[started]
    assert recorded.type == "booking.no_show_recorded" and recorded.data["code"] == "FTA"
    assert recorded.data["decision"]["fee"] == {
        "amount": "60.00",
        "currency": "AUD",
        "code": "D9986",
        "code_system": "CDT",
    }
    assert recorded.data["decision"]["charge_card"] is True
    assert recorded.data["decision"]["deposit_action"] == "keep"
    assert recorded.data["decision"]["policy_version"].startswith("r1.s")
    early = answers[future]
    assert early.type == "booking.no_show_rejected" and early.data["reason"] == "appointment_not_started"


async def test_bad_requests_are_rejected_with_a_sentence(practice, infra):
    unknown = await practice.outcome(await practice.cancel(unique("nobody"), STAFF, "practice"))
    assert unknown.data["reason"] == "not_found" and unknown.data["message"].endswith(".")

    booking_id = await practice.book(30 * H)
    long_reason = await practice.outcome(await practice.cancel(booking_id, STAFF, "practice", reason_text="x" * 256))
    assert long_reason.data["reason"] == "invalid_request" and "255" in long_reason.data["message"]

    # Missing `actor` and `channel`: dead-lettered with the reason, and the requester told.
    request_id = unique("request")
    await practice.publisher.event(
        UPSTREAM_BOOKINGS,
        "booking.cancellation_requested",
        booking_id,
        {"request_id": request_id, "booking_id": booking_id, "requested_at": iso(datetime.now(UTC))},
    )
    answer = await practice.outcome(request_id)
    assert answer.type == "booking.cancellation_rejected" and answer.data["reason"] == "invalid_request"
    assert "actor" in answer.data["message"]
    dead = await practice.watcher.wait_for(
        lambda s: s.topic == "dlq.booking.v1" and request_id in (s.data.get("original_value_text") or "")
    )
    assert "actor" in dead[0].data["error"]
    assert json.loads(dead[0].data["original_value_text"])["data"]["request_id"] == request_id

    # The booking itself is untouched and can still be cancelled.
    ok = await practice.outcome(await practice.cancel(booking_id, STAFF, "practice"))
    assert ok.type == "booking.cancelled"


async def test_waitlist_offer_expires_and_goes_to_the_next_patient(practice):
    await practice.configure(waitlist={"enabled": True, "offer_minutes": 1})
    first, second = unique("wait"), unique("wait")
    joined = datetime.now(UTC) - timedelta(days=2)
    for i, waitlist_id in enumerate((first, second)):
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
                "joined_at": iso(joined + timedelta(hours=i)),
            },
        )
    booking_id = await practice.book(30 * H)
    # Cancelled "59 s ago": the first offer (1 minute) expires within a second or two.
    at = datetime.now(UTC) - timedelta(seconds=59)
    cancelled = await practice.outcome(await practice.cancel(booking_id, STAFF, "practice", at=at))
    assert cancelled.type == "booking.cancelled"
    offers = await practice.watcher.wait_for(
        lambda s: s.type == "booking.slot_offered" and s.key == booking_id, count=2, timeout=40
    )
    assert [o.data["waitlist_id"] for o in offers] == [first, second]  # longest-waiting first
    assert datetime.fromisoformat(offers[0].data["expires_at"]) == at + timedelta(minutes=1)
    # Nobody took it and nobody is left: after the second offer expires, the slot is released.
    released = await practice.watcher.wait_for(
        lambda s: s.type == "booking.slot_released" and s.key == booking_id, timeout=90
    )
    assert len(released) == 1


async def test_suspension_cancels_the_professionals_future_bookings_without_penalty(practice):
    professional_id = unique("pro")
    future = [await practice.book(hours * H, professional_id=professional_id) for hours in (10, 50)]
    other = await practice.book(10 * H, professional_id=unique("pro"))
    await practice.publisher.event(
        SCORING_EVENTS,
        "account.suspended",
        professional_id,
        {"professional_id": professional_id, "holds": [unique("hold")], "suspended_at": iso(datetime.now(UTC))},
        source="service/scoring",
    )
    cancelled = await practice.watcher.wait_for(lambda s: s.type == "booking.cancelled" and s.key in future, count=2)
    for event in cancelled:
        assert event.data["actor"]["kind"] == "system" and event.data["channel"] == "system"
        assert event.data["decision"].get("score_delta") is None and event.data["decision"].get("fee") is None
    await practice.watcher.settle(1.0)
    assert not practice.watcher.matching(lambda s: s.type == "booking.cancelled" and s.key == other)


async def test_read_api_lists_cancelled_bookings_with_audit_and_reports(practice, services):
    late = await practice.book(5 * H, practitioner_id="dr-kim")
    timely = await practice.book(40 * H, practitioner_id="dr-kim")
    kept = await practice.book(60 * H, practitioner_id="dr-kim")
    for booking_id in (late, timely):
        await practice.outcome(await practice.cancel(booking_id, STAFF, "practice"))
    booking = services["booking"]
    page = booking.get_json(f"/bookings?practice_id={practice.practice_id}&status=cancelled")
    assert {b["booking_id"] for b in page["items"]} == {late, timely}
    detail = booking.get_json(f"/bookings/{late}")
    actions = [a["action"] for a in detail["audit_trail"]]
    assert actions[:1] == ["scheduled"] and "cancellation_assessed" in actions and "cancelled" in actions
    assert any(a["policy_version"] for a in detail["audit_trail"])
    now = datetime.now(UTC)
    report = booking.get_json(
        f"/reports/cancellations?practice_id={practice.practice_id}&group_by=practitioner"
        f"&from={iso(now - H).replace('+', '%2B')}&to={iso(now + 100 * H)}"
    )
    (group,) = report["groups"]
    assert (group["key"], group["bookings"], group["cancelled"], group["late"], group["timely"]) == (
        "dr-kim",
        3,
        2,
        1,
        1,
    )
    assert group["cancellation_rate"] == round(2 / 3, 4) and group["late_share_of_cancellations"] == 0.5
    assert kept


async def test_the_read_api_answers_only_the_right_practice(practice, services, infra):
    """The tenant comes from the token: another practice's booking is as absent as a missing one,
    a list never reaches past the token's practices, and nothing answers without a valid token."""
    booking_id = await practice.book(30 * H)
    await wait_for_row(infra.admin_dsn, "SELECT true FROM booking.bookings WHERE booking_id = $1", booking_id)
    booking = services["booking"]
    own = dev_token(practice_ids=[practice.practice_id], roles=["receptionist"])
    other = dev_token(practice_ids=["another-practice"], roles=["owner"])
    expired = dev_token(practice_ids=[practice.practice_id], roles=["owner"], ttl_seconds=-120)
    path = f"/bookings/{booking_id}"
    assert booking.get_json(path, token=own)["practice_id"] == practice.practice_id
    assert [booking.get_status(path, t) for t in (None, expired, "not-a-token", other)] == [401, 401, 401, 404]
    assert booking.get_status(f"/bookings?practice_id={practice.practice_id}", other) == 404
    assert booking.get_json("/bookings", token=other)["items"] == []
    assert booking_id in {b["booking_id"] for b in booking.get_json("/bookings?page_size=500", token=own)["items"]}
    assert booking.get_status("/bookings/not%20an%20id", own) == 422
    assert booking.get_status("/bookings?page_size=100000", own) == 422
    for period in (
        "from=0001-01-01T00:00:00%2B01:00&to=2026-12-01T00:00:00Z",  # overflows in UTC
        "from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",  # backwards
        "from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
    ):  # too long
        assert booking.get_status(f"/reports/cancellations?{period}", own) == 422, period
    try:
        booking.get_json("/bookings?practice_id=Ann%20Lee%20%2B61400000000", token=own)
    except urllib.error.HTTPError as refused:
        assert refused.code == 422 and "Ann Lee" not in refused.read().decode()  # never echoed
    assert booking.get_status("/healthz", None) == 200 and booking.get_status("/metrics", None) == 200


async def test_a_request_id_reused_for_another_booking_is_rejected_not_dropped(practice):
    first, second = await practice.book(30 * H), await practice.book(30 * H)
    request_id = await practice.cancel(first, STAFF, "practice")
    assert (await practice.outcome(request_id)).type == "booking.cancelled"
    await practice.publisher.event(
        UPSTREAM_BOOKINGS,
        "booking.cancellation_requested",
        second,
        {
            "request_id": request_id,
            "booking_id": second,
            "requested_at": iso(datetime.now(UTC)),
            "actor": STAFF,
            "channel": "practice",
        },
    )
    answer = await practice.watcher.wait_for(
        lambda s: s.key == second and s.type == "booking.cancellation_rejected" and s.data["request_id"] == request_id
    )
    assert answer[0].data["reason"] == "invalid_request" and "new request id" in answer[0].data["message"]


async def test_a_booking_arriving_after_the_suspension_is_cancelled_too(practice):
    # Topics are consumed independently: the suspension may be handled before the booking.
    professional_id = unique("pro")
    await practice.publisher.event(
        SCORING_EVENTS,
        "account.suspended",
        professional_id,
        {"professional_id": professional_id, "holds": [unique("hold")], "suspended_at": iso(datetime.now(UTC))},
        source="service/scoring",
    )
    await asyncio.sleep(1.0)
    late_arrival = await practice.book(20 * H, professional_id=professional_id)
    cancelled = await practice.watcher.wait_for(lambda s: s.type == "booking.cancelled" and s.key == late_arrival)
    assert cancelled[0].data["actor"]["kind"] == "system"
    assert cancelled[0].data["reason_code"] == "professional_suspended"

"""scoring's second release as a real process on the real broker and Postgres: a patient's
standing moving up with each counted case and back down when a fee is waived or a case ages out
(the review job), an office's score for staff cancelling a booked professional, and a
suspension ended by a reinstatement — each event produced exactly once, however often its cause
is delivered."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.common import Actor, Decision
from shared.testing import EventWatcher, Publisher, ServiceProcess, dev_token, iso, unique
from shared.topics import (
    BILLING_EVENTS,
    BOOKING_EVENTS,
    SCORING_EVENTS,
    UPSTREAM_PRACTICES,
    UPSTREAM_PROFESSIONALS,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scoring(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    log_dir: Path = tmp_path_factory.mktemp("scoring-accountability-logs")
    process = ServiceProcess(
        "scoring", infra.bootstrap, infra.admin_dsn, log_dir, env={"STANDING_REVIEW_POLL_SECONDS": "0.3"}
    )
    try:
        process.start()
        yield process
    finally:
        process.stop()


def decision(classification: str, **extra: Any) -> Decision:
    return Decision.new(
        allowed=True,
        classification=classification,
        charge_card=False,
        deposit_action="none",
        policy_version="r1.s1",
        **extra,
    )


def no_show(practice_id: str, patient_id: str, at: datetime, booking_id: str | None = None) -> dict[str, Any]:
    return BookingNoShowRecorded.new(
        booking_id=booking_id or unique("bk"),
        request_id=unique("req"),
        practice_id=practice_id,
        patient_id=patient_id,
        party="patient",
        code="FTA",
        starts_at=at - timedelta(minutes=20),
        recorded_at=at,
        decision=decision("no_show"),
    ).to_json_dict()


def cancelled(
    practice_id: str, actor: str, at: datetime, *, professional_id: str | None = None, **decided: Any
) -> dict[str, Any]:
    return BookingCancelled.new(
        booking_id=unique("bk"),
        request_id=unique("req"),
        practice_id=practice_id,
        patient_id=unique("pat"),
        professional_id=professional_id,
        practitioner_id="dr-1",
        service_code="D1110",
        starts_at=at + timedelta(hours=5),
        ends_at=at + timedelta(hours=6),
        cancelled_at=at,
        actor=Actor.new(kind=actor, id=professional_id if actor == "professional" else unique(actor)),
        channel={"professional": "professional_app", "staff": "practice"}[actor],
        status_label="Cancelled",
        classification="late",
        decision=decision("late", **decided),
    ).to_json_dict()


async def configure_standing(publisher: Publisher, practice_id: str, **standing: Any) -> None:
    await publisher.event(
        UPSTREAM_PRACTICES,
        "practice.configured",
        practice_id,
        {
            "practice_id": practice_id,
            "name": "Harbour Dental",
            "timezone": "Australia/Sydney",
            "locale": "en",
            "standing": {"enabled": True, **standing},
        },
    )


async def test_a_patients_standing_moves_up_and_down_once_per_move(scoring, infra, publisher):
    practice_id, patient_id = unique("practice"), unique("pat")
    now = datetime.now(UTC)
    await configure_standing(publisher, practice_id, forgive_first=False, deposit_required_after=2)
    standing = lambda s: s.topic == SCORING_EVENTS and s.key == patient_id  # noqa: E731
    async with EventWatcher(infra.bootstrap, [SCORING_EVENTS]) as w:
        await w.settle(1.0)  # the configuration first (topics are consumed in no fixed order)
        # Ages out 8 s from now: the review job moves the patient back down then.
        ageing = no_show(practice_id, patient_id, now - timedelta(days=365) + timedelta(seconds=8))
        await publisher.event(BOOKING_EVENTS, "booking.no_show_recorded", ageing["booking_id"], ageing)
        second = no_show(practice_id, patient_id, now - timedelta(hours=1))
        for _ in range(2):  # the same no-show twice (a redelivery under a new envelope id): one case
            await publisher.event(BOOKING_EVENTS, "booking.no_show_recorded", second["booking_id"], second)
        [up] = await w.wait_for(standing)
        third = no_show(practice_id, patient_id, now)
        await publisher.event(BOOKING_EVENTS, "booking.no_show_recorded", third["booking_id"], third)
        waived = {"charge_id": unique("ch"), "booking_id": third["booking_id"], "request_id": unique("req")}
        await publisher.event(BILLING_EVENTS, "charge.waived", third["booking_id"], waived)
        await publisher.event(BILLING_EVENTS, "charge.waived", third["booking_id"], waived)
        moves = await w.wait_for(standing, count=4, timeout=40)
        await w.settle(2.0)
        every = w.matching(standing)

    assert (up.type, up.data["standing"], up.data["previous"], up.data["count"]) == (
        "patient.standing_changed",
        "deposit_required",
        "good",
        2,
    )
    assert up.data["practice_id"] == practice_id and up.data["window_days"] == 365
    assert "2 no-shows or late cancellations at this practice in the last 365 days" in up.data["reason"]
    # up with the third case; back down when its fee is waived (twice: once); down again when
    # the oldest ages out (the review job, at the time it aged out) — each move exactly once.
    assert [(m.data["standing"], m.data["previous"], m.data["count"]) for m in moves] == [
        ("deposit_required", "good", 2),
        ("prepayment_required", "deposit_required", 3),
        ("deposit_required", "prepayment_required", 2),
        ("good", "deposit_required", 1),
    ]
    assert datetime.fromisoformat(moves[3].value["time"]) == now + timedelta(seconds=8)  # when it aged out
    assert len(every) == 4
    body = scoring.get_json(
        f"/practices/{practice_id}/standings", dev_token(practice_ids=[practice_id], roles=["receptionist"])
    )
    assert body["counts"]["good"] == 1 and body["items"] == []
    patient = scoring.get_json(f"/practices/{practice_id}/standings/{patient_id}")
    assert (patient["standing"], patient["count"]) == ("good", 1)


async def test_staff_cancelling_a_booked_professional_cost_the_office_once(scoring, infra, publisher):
    practice_id, professional_id, now = unique("practice"), unique("pro"), datetime.now(UTC)
    late = cancelled(
        practice_id,
        "staff",
        now,
        professional_id=professional_id,
        office_score_delta=-50,
        office_cause="late_cancelled_professional",
        turnaway_pay={"amount": "90.00", "currency": "AUD"},
    )
    async with EventWatcher(infra.bootstrap, [SCORING_EVENTS]) as w:
        for _ in range(2):
            await publisher.event(BOOKING_EVENTS, "booking.cancelled", late["booking_id"], late)
        [changed] = await w.wait_for(lambda s: s.key == practice_id)
        await w.settle(1.5)
        every = w.matching(lambda s: s.key in (practice_id, professional_id))

    assert changed.type == "office.score_changed"
    assert changed.data == {
        "practice_id": practice_id,
        "booking_id": late["booking_id"],
        "delta": -50,
        "score": 50,
        "cause": "late_cancelled_professional",
    }
    assert len(every) == 1  # once, and the professional's own score untouched
    [office] = scoring.get_json("/reports/office-scores", dev_token(practice_ids=[practice_id], roles=["manager"]))[
        "items"
    ]
    assert office == {"practice_id": practice_id, "score": 50, "timely_cancellations": 0, "late_cancellations": 1}


async def test_a_reinstatement_ends_the_suspension_once(scoring, infra, publisher):
    professional_id = unique("pro")
    start = datetime.now(UTC) - timedelta(days=3)
    is_reinstated = lambda s: s.key == professional_id and s.type == "account.reinstated"  # noqa: E731
    async with EventWatcher(infra.bootstrap, [SCORING_EVENTS]) as w:
        for n in range(3):
            event = cancelled(
                unique("practice"),
                "professional",
                start + timedelta(hours=n),
                professional_id=professional_id,
                score_delta=-50,
                hold_days=7,
            )
            await publisher.event(BOOKING_EVENTS, "booking.cancelled", event["booking_id"], event)
        await w.wait_for(lambda s: s.key == professional_id and s.type == "account.suspended")
        queue = scoring.get_json("/suspended-professionals?page_size=500")["items"]
        reinstated_at = datetime.now(UTC)
        reinstatement = {
            "professional_id": professional_id,
            "reviewer_id": "ops-1",
            "reinstated_at": iso(reinstated_at),
            "note": "Appeal upheld.",
        }
        for _ in range(2):
            await publisher.event(UPSTREAM_PROFESSIONALS, "professional.reinstated", professional_id, reinstatement)
        [reinstated] = await w.wait_for(is_reinstated)
        await w.settle(1.5)
        every = w.matching(is_reinstated)

    assert professional_id in [p["professional_id"] for p in queue]
    assert reinstated.data == {"professional_id": professional_id, "reinstated_at": iso(reinstated_at)}
    assert len(every) == 1
    assert professional_id not in [p["professional_id"] for p in scoring.get_json("/suspended-professionals")["items"]]
    record = scoring.get_json(f"/professionals/{professional_id}")
    assert record["suspended_at"] is None
    assert all(h["cleared_at"] is not None for h in record["holds"])

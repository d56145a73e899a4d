"""The scoring service as a real process against the real broker and Postgres: professional
cancellations, no-shows and completions on booking.events.v1 become score changes, stacked holds
and one suspension on scoring.events.v1; a duplicate delivery has its effect once; a payload
that breaks the contract lands in dlq.scoring.v1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.contracts.booking import BookingCancelled, BookingCompleted, BookingNoShowRecorded
from shared.contracts.common import Actor, Decision
from shared.testing import EventWatcher, Publisher, ServiceProcess, dev_token, unique
from shared.topics import BOOKING_EVENTS, SCORING_EVENTS, dead_letter_topic

pytestmark = pytest.mark.integration

DLQ = dead_letter_topic("scoring")
# A month ahead, so the holds these tests place are still running while they look (the expiry
# job lifts holds whose end has passed; test_scoring_excuses.py covers that).
START = (datetime.now(UTC) + timedelta(days=30)).replace(hour=9, minute=0, second=0, microsecond=0)
PENALTIES = {"timely": (-10, None), "late": (-50, 7), "no_show": (-100, 14)}


@pytest.fixture(scope="module")
def scoring(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One scoring process for the module (the tests use unique ids, so they share it)."""
    log_dir: Path = tmp_path_factory.mktemp("scoring-logs")
    process = ServiceProcess("scoring", infra.bootstrap, infra.admin_dsn, log_dir)
    try:
        process.start()
        yield process
    finally:
        process.stop()


def cancelled(
    booking_id: str,
    professional_id: str,
    classification: str,
    *,
    actor_kind: str = "professional",
    starts_at: datetime = START,
) -> dict[str, Any]:
    delta, hold = PENALTIES[classification] if actor_kind == "professional" else (None, None)
    lead = {"timely": timedelta(days=3), "late": timedelta(hours=5), "no_show": timedelta(minutes=30)}[classification]
    actor_id = professional_id if actor_kind == "professional" else unique(actor_kind)
    channel = {"professional": "professional_app", "staff": "practice", "patient": "patient_portal", "system": "system"}
    return BookingCancelled.new(
        booking_id=booking_id,
        request_id=unique("req"),
        practice_id=unique("practice"),
        patient_id=unique("pat"),
        professional_id=professional_id,
        practitioner_id=unique("dr"),
        service_code="hygiene",
        starts_at=starts_at,
        ends_at=starts_at + timedelta(minutes=45),
        cancelled_at=starts_at - lead,
        actor=Actor.new(kind=actor_kind, id=actor_id, roles=[]),
        channel=channel[actor_kind],
        status_label="Cancelled online" if actor_kind == "patient" else "Cancelled",
        classification=classification,
        decision=Decision.new(
            allowed=True,
            classification=classification,
            charge_card=False,
            deposit_action="none",
            score_delta=delta,
            hold_days=hold,
            policy_version="r1.s0",
        ),
    ).to_json_dict()


def no_show(booking_id: str, professional_id: str, *, party: str = "professional") -> dict[str, Any]:
    return BookingNoShowRecorded.new(
        booking_id=booking_id,
        request_id=unique("req"),
        practice_id=unique("practice"),
        patient_id=unique("pat"),
        professional_id=professional_id,
        party=party,
        code="DNA",
        starts_at=START,
        recorded_at=START + timedelta(minutes=70),
        decision=Decision.new(
            allowed=True,
            classification="no_show",
            charge_card=False,
            deposit_action="none",
            score_delta=-100 if party == "professional" else None,
            hold_days=14 if party == "professional" else None,
            policy_version="r1.s0",
        ),
    ).to_json_dict()


def completed(booking_id: str, professional_id: str | None) -> dict[str, Any]:
    return BookingCompleted.new(
        booking_id=booking_id, completed_at=START + timedelta(hours=1), professional_id=professional_id
    ).to_json_dict()


def of(professional_id: str, type_: str, booking_id: str | None = None):
    def predicate(s: Any) -> bool:
        return (
            s.key == professional_id
            and s.type == type_
            and (booking_id is None or s.data.get("booking_id") == booking_id)
        )

    return predicate


async def test_late_cancellation_costs_fifty_points_and_a_seven_day_hold(
    scoring: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    pro, booking = unique("pro"), unique("bk")
    data = cancelled(booking, pro, "late")
    async with EventWatcher(infra.bootstrap, [SCORING_EVENTS]) as w:
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data, source="service/booking")
        [changed] = await w.wait_for(of(pro, "score.changed", booking))
        [placed] = await w.wait_for(of(pro, "hold.placed", booking))
    assert changed.data == {
        "professional_id": pro,
        "booking_id": booking,
        "delta": -50,
        "score": 50,
        "cause": "late_cancelled",
    }
    cancelled_at = datetime.fromisoformat(data["cancelled_at"])
    assert placed.data["cause"] == "late_cancellation"
    assert datetime.fromisoformat(placed.data["starts_at"]) == cancelled_at
    assert datetime.fromisoformat(placed.data["ends_at"]) == cancelled_at + timedelta(days=7)
    # score.changed is published before hold.placed, both keyed by the professional
    assert changed.offset < placed.offset and changed.partition == placed.partition

    body = scoring.get_json(f"/professionals/{pro}")
    assert body["score"] == 50
    assert [(e["booking_id"], e["delta"], e["cause"]) for e in body["ledger"]] == [(booking, -50, "late_cancelled")]
    assert [(h["hold_id"], h["status"]) for h in body["holds"]] == [(placed.data["hold_id"], "running")]


async def test_holds_stack_and_three_holds_suspend_once(
    scoring: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    pro = unique("pro")
    first, second, third, fourth = (unique("bk") for _ in range(4))
    async with EventWatcher(infra.bootstrap, [SCORING_EVENTS]) as w:
        # one after the other, so the stacking order is the order published
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", first, cancelled(first, pro, "late"))
        [h1] = await w.wait_for(of(pro, "hold.placed", first))
        await publisher.event(BOOKING_EVENTS, "booking.no_show_recorded", second, no_show(second, pro))
        [h2] = await w.wait_for(of(pro, "hold.placed", second))
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", third, cancelled(third, pro, "no_show"))
        [h3] = await w.wait_for(of(pro, "hold.placed", third))
        [suspended] = await w.wait_for(of(pro, "account.suspended"))
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", fourth, cancelled(fourth, pro, "late"))
        await w.wait_for(of(pro, "hold.placed", fourth))
        await w.settle(1.5)
        scores = [s.data for s in w.matching(of(pro, "score.changed"))]
        assert len(w.matching(of(pro, "account.suspended"))) == 1  # once per professional

    # the second hold starts when the first ends, the third when the second ends
    assert h2.data["starts_at"] == h1.data["ends_at"]
    assert h3.data["starts_at"] == h2.data["ends_at"]
    assert datetime.fromisoformat(h2.data["ends_at"]) - datetime.fromisoformat(h2.data["starts_at"]) == timedelta(
        days=14
    )
    assert [h1.data["cause"], h2.data["cause"], h3.data["cause"]] == ["late_cancellation", "no_show", "no_show"]
    # listed oldest first by the time of what caused them: h3's cancellation (30 min before the
    # start) happened before h2's no-show was recorded (70 min after it)
    assert suspended.data["holds"] == [h1.data["hold_id"], h3.data["hold_id"], h2.data["hold_id"]]
    assert [(s["delta"], s["score"], s["cause"]) for s in scores] == [
        (-50, 50, "late_cancelled"),
        (-100, -50, "no_show"),
        (-100, -150, "no_show"),  # nothing is clamped
        (-50, -200, "late_cancelled"),
    ]
    body = scoring.get_json(f"/professionals/{pro}")
    assert body["score"] == -200 and body["suspended_at"] is not None
    assert body["suspension_holds"] == suspended.data["holds"]
    assert len(body["holds"]) == 4


async def test_timely_cancellation_and_completion(scoring: ServiceProcess, infra: Any, publisher: Publisher) -> None:
    pro, timely, done = unique("pro"), unique("bk"), unique("bk")
    async with EventWatcher(infra.bootstrap, [SCORING_EVENTS]) as w:
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", timely, cancelled(timely, pro, "timely"))
        [c1] = await w.wait_for(of(pro, "score.changed", timely))
        await publisher.event(BOOKING_EVENTS, "booking.completed", done, completed(done, pro))
        [c2] = await w.wait_for(of(pro, "score.changed", done))
        await w.settle(1.0)
        assert not w.matching(of(pro, "hold.placed"))  # a timely cancellation places no hold
    assert (c1.data["delta"], c1.data["score"], c1.data["cause"]) == (-10, 90, "cancelled")
    assert (c2.data["delta"], c2.data["score"], c2.data["cause"]) == (10, 100, "completed")


async def test_cancellations_by_others_and_patient_no_shows_leave_the_score_alone(
    scoring: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    pro = unique("pro")
    by_staff, by_patient, by_system, patient_absent, marker, unstaffed = (unique("bk") for _ in range(6))
    async with EventWatcher(infra.bootstrap, [SCORING_EVENTS]) as w:
        others = ((by_staff, "staff", "late"), (by_patient, "patient", "timely"), (by_system, "system", "timely"))
        for booking, kind, classification in others:
            data = cancelled(booking, pro, classification, actor_kind=kind)
            await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data)
        absent = no_show(patient_absent, pro, party="patient")
        await publisher.event(BOOKING_EVENTS, "booking.no_show_recorded", patient_absent, absent)
        await publisher.event(BOOKING_EVENTS, "booking.completed", unstaffed, completed(unstaffed, None))
        await publisher.event(BOOKING_EVENTS, "booking.completed", marker, completed(marker, pro))
        [changed] = await w.wait_for(of(pro, "score.changed", marker))
        await w.settle(2.0)
        assert [s.data["booking_id"] for s in w.matching(lambda s: s.key == pro)] == [marker]
        assert not w.matching(lambda s: s.data.get("booking_id") == unstaffed)
    assert changed.data["score"] == 110


async def test_a_duplicate_delivery_changes_the_score_once(
    scoring: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    pro, booking, marker = unique("pro"), unique("bk"), unique("bk")
    data = cancelled(booking, pro, "late")
    async with EventWatcher(infra.bootstrap, [SCORING_EVENTS]) as w:
        env = await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data)
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data, event_id=env["id"])
        # a replay under a new envelope id (e.g. the producer re-sent it) is the same cancellation
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data)
        await publisher.event(BOOKING_EVENTS, "booking.completed", marker, completed(marker, pro))
        await w.wait_for(of(pro, "score.changed", booking))
        await w.wait_for(of(pro, "score.changed", marker))
        await w.settle(2.0)
        assert len(w.matching(of(pro, "score.changed", booking))) == 1
        assert len(w.matching(of(pro, "hold.placed", booking))) == 1
    assert scoring.get_json(f"/professionals/{pro}")["score"] == 60


async def test_a_contract_breaking_payload_is_dead_lettered(
    scoring: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    pro, broken, after = unique("pro"), unique("bk"), unique("bk")
    data = cancelled(broken, pro, "late")
    data["classification"] = "very_late"  # not a classification the contract names
    del data["decision"]["policy_version"]
    async with EventWatcher(infra.bootstrap, [DLQ, SCORING_EVENTS]) as w:
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", broken, data)
        await publisher.raw(BOOKING_EVENTS, broken, b"{not json")
        [first, second] = await w.wait_for(lambda s: s.topic == DLQ and s.key == broken, count=2)
        # the consumer moved on
        await publisher.event(BOOKING_EVENTS, "booking.completed", after, completed(after, pro))
        await w.wait_for(of(pro, "score.changed", after))
    letters = {s.data["original_value_text"]: s.data for s in (first, second)}
    assert letters["{not json"]["error"].startswith("not JSON")
    [contract] = [v for k, v in letters.items() if k != "{not json"]
    assert "booking.cancelled payload breaks the contract" in contract["error"]
    assert json.loads(contract["original_value_text"])["data"]["classification"] == "very_late"
    assert contract["original_topic"] == BOOKING_EVENTS and contract["service"] == "scoring"


async def test_read_api_is_for_ops_and_refuses_unknown_ids_and_bad_parameters(
    scoring: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    pro, booking = unique("pro"), unique("bk")
    async with EventWatcher(infra.bootstrap, [SCORING_EVENTS]) as w:
        await publisher.event(BOOKING_EVENTS, "booking.completed", booking, completed(booking, pro))
        await w.wait_for(of(pro, "score.changed", booking))
    path = f"/professionals/{pro}"
    ops = dev_token(roles=["ops"])
    # a professional works for many practices: no practice's token reads their score
    owner = dev_token(practice_ids=[unique("practice")], roles=["owner", "manager"])
    assert scoring.get_status(path, None) == 401
    assert scoring.get_status(path, "not-a-token") == 401
    assert scoring.get_status(path, owner) == 403
    assert scoring.get_status(f"{path}/excuses", owner) == 403
    assert scoring.get_status(f"/excuses/{unique('ex')}", owner) == 403
    assert scoring.get_status(path, ops) == 200
    body = scoring.get_json(path, ops)
    assert (body["score"], body["ledger_entries"], body["holds"], body["suspended_at"]) == (110, 1, [], None)
    assert (body["page"], body["page_size"]) == (1, 50)
    assert scoring.get_json(f"{path}/excuses")["items"] == []
    # nothing scoring has heard of: 404
    assert scoring.get_status(f"/professionals/{unique('pro')}", ops) == 404
    assert scoring.get_status(f"/professionals/{unique('pro')}/excuses", ops) == 404
    assert scoring.get_status(f"/excuses/{unique('ex')}", ops) == 404
    # bad parameters: 422
    assert scoring.get_status(f"{path}?page_size=0", ops) == 422
    assert scoring.get_status(f"{path}?page=0", ops) == 422
    assert scoring.get_status(f"/professionals/{'x' * 300}", ops) == 422
    assert scoring.get_json(f"{path}?page=2")["ledger"] == []

"""Excuses, hold expiry, recalculation and suspension of the scoring service, end to end on the
real broker and Postgres: professional cancellations on booking.events.v1 and excuses on
upstream.professionals.v1 in, scoring.events.v1 and the read API out.

Other scoring processes (other test modules, e2e runs) may share the consumer group and the
database, so the tests wait on published events and on the read API (database state), never on
which process did the work.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_scoring_service import START, cancelled, completed, of

from shared import background, db
from shared.provision import service_dsn
from shared.testing import EventWatcher, Publisher, ServiceProcess, dev_token, iso, unique
from shared.topics import BOOKING_EVENTS, SCORING_EVENTS, UPSTREAM_PROFESSIONALS, dead_letter_topic

pytestmark = pytest.mark.integration

DLQ = dead_letter_topic("scoring")


@pytest.fixture(scope="module")
def scoring(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One scoring process whose expiry job polls twice a second."""
    log_dir: Path = tmp_path_factory.mktemp("scoring-excuse-logs")
    process = ServiceProcess(
        "scoring", infra.bootstrap, infra.admin_dsn, log_dir, env={"HOLD_EXPIRY_POLL_SECONDS": "0.5"}
    )
    try:
        process.start()
        yield process
    finally:
        process.stop()


async def until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `check` (sync; e.g. a read API call) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout}s; last: {last!r}")


def excuse_of(scoring: ServiceProcess, excuse_id: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        if scoring.get_status(f"/excuses/{excuse_id}", dev_token(roles=["ops"])) == 404:
            return None
        found: dict[str, Any] = scoring.get_json(f"/excuses/{excuse_id}")
        return found

    return check


def queue(scoring: ServiceProcess, status: str) -> set[str]:
    """The ids on GET /excuses?status= (every page): the console's review queue."""
    found: set[str] = set()
    for page in range(1, 1000):
        items = scoring.get_json(f"/excuses?status={status}&page={page}&page_size=500")["items"]
        found |= {x["excuse_id"] for x in items}
        if len(items) < 500:
            return found
    return found


def reviewed_by_now(scoring: ServiceProcess, excuse_id: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        excuse = excuse_of(scoring, excuse_id)()
        return excuse if excuse and excuse["reviewer_id"] else None

    return check


async def submit(
    publisher: Publisher, pro: str, booking: str, excuse_id: str | None = None, **kw: Any
) -> tuple[str, dict[str, Any]]:
    excuse_id = excuse_id or unique("ex")
    data = {
        "excuse_id": excuse_id,
        "professional_id": pro,
        "booking_id": booking,
        "document_ref": f"docs/{excuse_id}.pdf",
        "submitted_at": iso(datetime.now(UTC)),
    }
    env = await publisher.event(
        UPSTREAM_PROFESSIONALS, "excuse.submitted", pro, data, source="upstream/marketplace", **kw
    )
    return excuse_id, env


async def review(publisher: Publisher, pro: str, excuse_id: str, decision: str, **kw: Any) -> dict[str, Any]:
    data = {
        "excuse_id": excuse_id,
        "decision": decision,
        "reviewer_id": unique("rev"),
        "reviewed_at": iso(datetime.now(UTC)),
    }
    return await publisher.event(
        UPSTREAM_PROFESSIONALS, "excuse.reviewed", pro, data, source="upstream/marketplace", **kw
    )


async def request_recalculation(
    publisher: Publisher, subject: str, professional_id: str | None, **kw: Any
) -> dict[str, Any]:
    data = {"professional_id": professional_id} if professional_id else {}
    return await publisher.event(
        UPSTREAM_PROFESSIONALS, "score.recalculation_requested", subject, data, source="upstream/ops", **kw
    )


async def late_cancellation(
    publisher: Publisher, w: EventWatcher, pro: str, *, starts_at: datetime = START, **kw: Any
) -> tuple[str, dict[str, Any]]:
    """A professional's late cancellation (−50, 7-day hold); returns (booking, hold.placed data)."""
    booking = unique("bk")
    await publisher.event(
        BOOKING_EVENTS, "booking.cancelled", booking, cancelled(booking, pro, "late", starts_at=starts_at), **kw
    )
    [placed] = await w.wait_for(of(pro, "hold.placed", booking))
    return booking, placed.data


async def marker(publisher: Publisher, scoring: ServiceProcess, pro: str) -> None:
    """Everything published for `pro` on upstream.professionals.v1 before this has been handled:
    an excuse that is refused at once, visible in the read API, on the same partition (key)."""
    excuse_id, _ = await submit(publisher, pro, unique("bk-marker"))
    await until(excuse_of(scoring, excuse_id), what="the marker excuse")


def recalculated(pro: str) -> Callable[[Any], bool]:
    return lambda s: of(pro, "score.changed")(s) and s.data["cause"] == "recalculated"


def holds_by_id(scoring: ServiceProcess, pro: str) -> dict[str, dict[str, Any]]:
    return {h["hold_id"]: h for h in scoring.get_json(f"/professionals/{pro}")["holds"]}


async def test_an_approved_excuse_lifts_the_hold_at_once_and_the_recalculation_restores_the_score(
    scoring: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    pro = unique("pro")
    async with EventWatcher(infra.bootstrap, [SCORING_EVENTS, DLQ]) as w:
        booking, hold = await late_cancellation(publisher, w, pro)
        excuse_id, _ = await submit(publisher, pro, booking)
        pending = await until(excuse_of(scoring, excuse_id), what="the excuse recorded")
        assert (pending["status"], pending["reason"], pending["booking_id"]) == ("pending", None, booking)
        assert excuse_id in queue(scoring, "pending") and excuse_id not in queue(scoring, "approved")

        await review(publisher, pro, excuse_id, "approved")
        [lifted] = await w.wait_for(of(pro, "hold.lifted"))
        assert excuse_id not in queue(scoring, "pending") and excuse_id in queue(scoring, "approved")
        assert lifted.data == {"hold_id": hold["hold_id"], "professional_id": pro, "cause": "excused"}
        body = scoring.get_json(f"/professionals/{pro}")
        [held] = body["holds"]
        assert (held["status"], held["lift_cause"], held["excuse_id"]) == ("lifted", "excused", excuse_id)
        assert scoring.get_json(f"/professionals/{pro}/excuses")["items"][0]["status"] == "approved"
        # the penalty leaves the score at the next recalculation, not at the approval
        assert body["score"] == 50
        assert not w.matching(recalculated(pro))

        await request_recalculation(publisher, pro, pro)
        [restored] = await w.wait_for(recalculated(pro))
        assert restored.data == {
            "professional_id": pro,
            "booking_id": booking,
            "delta": 50,
            "score": 100,
            "cause": "recalculated",
        }

        # a second recalculation, for this professional and for all, moves nothing
        await request_recalculation(publisher, pro, pro)
        await request_recalculation(publisher, pro, None)
        await marker(publisher, scoring, pro)
        await w.settle(1.0)
        assert len(w.matching(recalculated(pro))) == 1
        assert len(w.matching(of(pro, "hold.lifted"))) == 1
        assert not w.matching(lambda s: s.topic == DLQ and s.key == pro)

    body = scoring.get_json(f"/professionals/{pro}")
    assert body["score"] == 100
    # the ledger keeps the penalty and adds the compensating entry (listed by the time of what
    # caused each: this test's cancellation lies in the future, so the order is not asserted)
    assert sorted((e["booking_id"], e["delta"], e["cause"]) for e in body["ledger"]) == [
        (booking, -50, "late_cancelled"),
        (booking, 50, "excused"),
    ]


async def test_a_rejected_excuse_changes_nothing(scoring: ServiceProcess, infra: Any, publisher: Publisher) -> None:
    pro = unique("pro")
    async with EventWatcher(infra.bootstrap, [SCORING_EVENTS]) as w:
        booking, hold = await late_cancellation(publisher, w, pro)
        excuse_id, _ = await submit(publisher, pro, booking)
        await review(publisher, pro, excuse_id, "rejected")
        rejected = await until(reviewed_by_now(scoring, excuse_id), what="the review recorded")
        # a later approval does not overturn the first decision
        await review(publisher, pro, excuse_id, "approved")
        await request_recalculation(publisher, pro, pro)
        await marker(publisher, scoring, pro)
        await w.settle(1.0)
        assert not w.matching(of(pro, "hold.lifted"))
        assert [s.data["cause"] for s in w.matching(of(pro, "score.changed"))] == ["late_cancelled"]

    assert (rejected["status"], rejected["decision"], rejected["reason"]) == (
        "rejected",
        "rejected",
        "rejected_by_reviewer",
    )
    assert rejected["message"]
    body = scoring.get_json(f"/professionals/{pro}")
    assert body["score"] == 50
    assert [(h["hold_id"], h["status"]) for h in body["holds"]] == [(hold["hold_id"], "running")]
    [excuse] = [x for x in scoring.get_json(f"/professionals/{pro}/excuses")["items"] if x["excuse_id"] == excuse_id]
    assert excuse["status"] == "rejected"


async def test_excuses_scoring_cannot_apply_are_recorded_as_rejected_with_the_reason(
    scoring: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    pro, stranger, completed_booking = unique("pro"), unique("pro"), unique("bk")
    async with EventWatcher(infra.bootstrap, [SCORING_EVENTS, DLQ]) as w:
        booking, _ = await late_cancellation(publisher, w, pro)
        await publisher.event(BOOKING_EVENTS, "booking.completed", completed_booking, completed(completed_booking, pro))
        await w.wait_for(of(pro, "score.changed", completed_booking))

        unknown_booking, _ = await submit(publisher, pro, unique("bk"))
        not_penalised, _ = await submit(publisher, pro, completed_booking)  # a completion is no penalty
        wrong_professional, _ = await submit(publisher, stranger, booking)  # someone else's booking
        never_submitted = unique("ex")
        await review(publisher, pro, never_submitted, "approved")
        # approving an excuse scoring refused changes nothing either
        await review(publisher, pro, unknown_booking, "approved")

        refused = {
            x: await until(excuse_of(scoring, x), what=f"excuse {x}")
            for x in (unknown_booking, not_penalised, wrong_professional, never_submitted)
        }
        await until(reviewed_by_now(scoring, unknown_booking), what="the review of the refused excuse")
        await request_recalculation(publisher, pro, pro)
        await marker(publisher, scoring, pro)
        await w.settle(1.0)
        assert not w.matching(lambda s: s.topic == DLQ and s.key in (pro, stranger))  # valid messages
        assert not w.matching(of(pro, "hold.lifted"))
        assert [s.data["cause"] for s in w.matching(of(pro, "score.changed"))] == ["late_cancelled", "completed"]

    assert {x: (e["status"], e["reason"]) for x, e in refused.items()} == {
        unknown_booking: ("rejected", "unknown_booking"),
        not_penalised: ("rejected", "unknown_booking"),
        wrong_professional: ("rejected", "unknown_professional"),
        never_submitted: ("rejected", "unknown_excuse"),
    }
    assert all(e["message"] for e in refused.values())
    assert refused[never_submitted]["professional_id"] == pro  # from the envelope subject
    body = scoring.get_json(f"/professionals/{pro}")
    assert body["score"] == 60
    excuses = scoring.get_json(f"/professionals/{pro}/excuses")["items"]
    assert {x["excuse_id"] for x in excuses} >= {unknown_booking, not_penalised, never_submitted}
    # scoring never scored the stranger, but knows them by the excuse it refused
    assert scoring.get_json(f"/professionals/{stranger}")["score"] == 100
    listed = scoring.get_json(f"/professionals/{stranger}/excuses")["items"]
    assert [(x["excuse_id"], x["reason"]) for x in listed] == [(wrong_professional, "unknown_professional")]


async def test_a_hold_whose_end_has_passed_is_lifted_by_the_scheduler(
    scoring: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    pro = unique("pro")
    # cancelled 8 days ago (5 h before a start 8 days ago + 5 h): its 7-day hold ended yesterday
    starts_at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=8) + timedelta(hours=5)
    async with EventWatcher(infra.bootstrap, [SCORING_EVENTS]) as w:
        _booking, hold = await late_cancellation(publisher, w, pro, starts_at=starts_at)
        [lifted] = await w.wait_for(of(pro, "hold.lifted"), timeout=15)
        await w.settle(1.5)
        assert len(w.matching(of(pro, "hold.lifted"))) == 1
    assert lifted.data == {"hold_id": hold["hold_id"], "professional_id": pro, "cause": "expired"}
    assert datetime.fromisoformat(lifted.value["time"]) == datetime.fromisoformat(hold["ends_at"])
    held = holds_by_id(scoring, pro)[hold["hold_id"]]
    assert (held["status"], held["lift_cause"]) == ("lifted", "expired")
    assert datetime.fromisoformat(held["lifted_at"]) == datetime.fromisoformat(hold["ends_at"])
    assert scoring.get_json(f"/professionals/{pro}")["score"] == 50  # the penalty stays


async def test_excused_holds_do_not_count_and_a_third_unexcused_hold_suspends_once(
    scoring: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    pro = unique("pro")
    async with EventWatcher(infra.bootstrap, [SCORING_EVENTS]) as w:
        excused_booking, first = await late_cancellation(publisher, w, pro)
        excuse_id, _ = await submit(publisher, pro, excused_booking)
        await until(excuse_of(scoring, excuse_id), what="the excuse recorded")
        await review(publisher, pro, excuse_id, "approved")
        await w.wait_for(of(pro, "hold.lifted"))

        _, second = await late_cancellation(publisher, w, pro, starts_at=START + timedelta(days=1))
        _, third = await late_cancellation(publisher, w, pro, starts_at=START + timedelta(days=2))
        await w.settle(1.0)
        assert not w.matching(of(pro, "account.suspended"))  # three holds, one excused: two count

        _, fourth = await late_cancellation(publisher, w, pro, starts_at=START + timedelta(days=3))
        [suspended] = await w.wait_for(of(pro, "account.suspended"))
        await late_cancellation(publisher, w, pro, starts_at=START + timedelta(days=4))
        await w.settle(1.5)
        assert len(w.matching(of(pro, "account.suspended"))) == 1

    assert suspended.data["holds"] == [second["hold_id"], third["hold_id"], fourth["hold_id"]]
    # the excused hold held nothing: the second starts at its own cancellation, not after the first
    assert datetime.fromisoformat(second["starts_at"]) == START + timedelta(days=1) - timedelta(hours=5)
    assert datetime.fromisoformat(first["ends_at"]) > datetime.fromisoformat(second["starts_at"])
    assert third["starts_at"] == second["ends_at"] and fourth["starts_at"] == third["ends_at"]
    body = scoring.get_json(f"/professionals/{pro}")
    assert body["suspension_holds"] == suspended.data["holds"] and body["suspended_at"] is not None


async def test_redelivered_events_never_count_twice(scoring: ServiceProcess, infra: Any, publisher: Publisher) -> None:
    pro = unique("pro")
    async with EventWatcher(infra.bootstrap, [SCORING_EVENTS]) as w:
        booking = unique("bk")
        data = cancelled(booking, pro, "late")
        env = await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data)
        await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking, data, event_id=env["id"])
        await w.wait_for(of(pro, "hold.placed", booking))

        excuse_id, sub = await submit(publisher, pro, booking)
        await submit(publisher, pro, booking, excuse_id, event_id=sub["id"])  # same envelope
        await submit(publisher, pro, booking, excuse_id)  # same excuse, new envelope (a replay)
        rev = await review(publisher, pro, excuse_id, "approved")
        await publisher.raw(UPSTREAM_PROFESSIONALS, pro, json.dumps(rev).encode())  # same envelope
        await review(publisher, pro, excuse_id, "approved")  # a second review: decided already
        req = await request_recalculation(publisher, pro, pro)
        await request_recalculation(publisher, pro, pro, event_id=req["id"])
        await request_recalculation(publisher, pro, pro)
        await marker(publisher, scoring, pro)
        await w.settle(1.5)

        assert len(w.matching(of(pro, "hold.placed"))) == 1
        assert len(w.matching(of(pro, "hold.lifted"))) == 1
        changes = [(s.data["delta"], s.data["score"], s.data["cause"]) for s in w.matching(of(pro, "score.changed"))]
        assert changes == [(-50, 50, "late_cancelled"), (50, 100, "recalculated")]
    assert scoring.get_json(f"/professionals/{pro}")["score"] == 100


async def test_the_nightly_recalculation_runs_once_per_night_across_replicas(
    scoring: ServiceProcess, infra: Any, publisher: Publisher
) -> None:
    """Two replicas' nightly runs of the same date, at once: one does the work, the other finds
    the date claimed; a later night finds nothing left to do for this professional."""
    from scoring.scheduler import run_recalculation

    async def nights(*days: date) -> list[int | None]:
        """Each day's run at once, as replicas would run it: one round each of a background job
        (shared.background) that finds that day due; what each run came to."""
        results: dict[int, int | None] = {}

        def replica(i: int, day: date) -> background.DueWork[date, Any]:
            async def claim(conn: Any, now: datetime, limit: int) -> list[date]:
                return [day]

            async def act(unit: background.WorkUnit[Any], run_date: date) -> None:
                results[i] = await run_recalculation(unit, run_date)

            return background.DueWork(
                name="recalculate_nightly", claim=claim, act=act, interval_seconds=1, batch_size=1
            )

        await asyncio.gather(
            *(
                background.run_round(replica(i, day), pool=pool, service="scoring", deps=None)
                for i, day in enumerate(days)
            )
        )
        return [results[i] for i in range(len(days))]

    pro = unique("pro")
    pool = await db.create_pool(service_dsn(infra.admin_dsn, "scoring"), "scoring", application_name="test-scoring")
    try:
        async with EventWatcher(infra.bootstrap, [SCORING_EVENTS]) as w:
            booking, _ = await late_cancellation(publisher, w, pro)
            excuse_id, _ = await submit(publisher, pro, booking)
            await until(excuse_of(scoring, excuse_id), what="the excuse recorded")
            await review(publisher, pro, excuse_id, "approved")
            await w.wait_for(of(pro, "hold.lifted"))

            # dates no real night will use, unique per run of this test
            night = date.fromordinal(random.randrange(date(1000, 1, 1).toordinal(), date(1900, 1, 1).toordinal()))
            results = await nights(night, night)
            assert results.count(None) == 1  # the other replica found the night claimed
            [restored] = await w.wait_for(recalculated(pro))
            assert (restored.data["delta"], restored.data["score"]) == (50, 100)

            await nights(night + timedelta(days=1))
            await w.settle(1.5)
            assert len(w.matching(recalculated(pro))) == 1
    finally:
        await pool.close()
    assert scoring.get_json(f"/professionals/{pro}")["score"] == 100

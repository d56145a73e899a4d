"""pms.update_fee on the real broker and database: billing's fee events (published here as
billing would) reach the practice's PMS topic as the contract says, each change once, resent
until acknowledged, and an older update never resent over a newer one.

A fee in review is left out of the cancellation's command and told when it is final (with the
edit made in review); a final fee lowered, lowered again and waived is told each time with its
own sync_id, the newest superseding the older one no connector acknowledged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_pms_sync_service import (
    ALL_TOPICS,
    LATE_FEE,
    PRAKTIKA,
    ack,
    booking_cancelled,
    configure,
    of,
    start_pms_sync,
)

from shared.testing import EventWatcher, Publisher, ServiceProcess, unique, wait_for_row
from shared.topics import BILLING_EVENTS, BOOKING_EVENTS

pytestmark = pytest.mark.integration

LOWER = {"amount": "30.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}
LOWEST = {"amount": "20.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}


@pytest.fixture
def pms_sync(infra: Any, log_dir: Any) -> Iterator[ServiceProcess]:
    service = start_pms_sync(infra, log_dir, PMS_ACK_TIMEOUT_SECONDS="1", PMS_RETRY_POLL_SECONDS="0.2")
    try:
        yield service
    finally:
        service.stop()


def created(charge_id: str, booking_id: str, status: str, fee: dict[str, str]) -> dict[str, Any]:
    return {
        "charge_id": charge_id,
        "booking_id": booking_id,
        "patient_id": unique("pat"),
        "kind": "late_cancellation",
        "status": status,
        **fee,
    }


def updates(booking_id: str) -> Any:
    return of(booking_id, "pms.update_fee")


async def cancel_at_praktika(
    infra: Any, publisher: Publisher, w: EventWatcher, *, review_hours: int | None
) -> tuple[str, str]:
    """A practice on Praktika, a late cancellation with its fee (in review when review_hours),
    synced on the system channel (no upstream request to wait for). Returns practice and booking."""
    practice_id, booking_id = unique("prac"), unique("bk")
    await configure(infra, publisher, practice_id, "praktika")
    actor = {"kind": "system", "id": "service/booking", "roles": []}
    event = booking_cancelled(booking_id, unique("req"), practice_id, actor, channel="system")
    event["decision"]["review_hours"] = review_hours
    await publisher.event(BOOKING_EVENTS, "booking.cancelled", booking_id, event)
    [command] = await w.wait_for(of(booking_id, "pms.cancel_booking"), timeout=60)
    assert command.topic == PRAKTIKA
    assert command.data.get("fee") == (None if review_hours else LATE_FEE)  # nobody told before final
    await ack(publisher, command.data["sync_id"], booking_id, "ok")
    return practice_id, booking_id


async def test_a_fee_in_review_reaches_the_pms_once_final_with_its_edit(
    infra: Any, publisher: Publisher, pms_sync: ServiceProcess
) -> None:
    charge_id = unique("ch")
    async with EventWatcher(infra.bootstrap, ALL_TOPICS) as w:
        practice_id, booking_id = await cancel_at_praktika(infra, publisher, w, review_hours=24)
        await publisher.event(
            BILLING_EVENTS, "charge.created", booking_id, created(charge_id, booking_id, "pending_review", LATE_FEE)
        )
        edit = {"charge_id": charge_id, "request_id": unique("rev"), "before": LATE_FEE, "after": LOWER}
        await publisher.event(BILLING_EVENTS, "charge.adjusted", booking_id, edit)
        await wait_for_row(
            infra.admin_dsn,
            "SELECT true FROM pms_sync.charges WHERE charge_id = $1 AND fee->>'amount' = '30.00'",
            charge_id,
        )
        assert w.matching(updates(booking_id)) == []  # an edit in review tells the PMS nothing

        await publisher.event(
            BILLING_EVENTS, "charge.created", booking_id, created(charge_id, booking_id, "due", LOWER)
        )
        [update] = await w.wait_for(updates(booking_id), timeout=60)
        assert update.topic == PRAKTIKA and update.key == booking_id
        assert update.data == {
            "sync_id": update.data["sync_id"],
            "booking_id": booking_id,
            "practice_id": practice_id,
            "charge_id": charge_id,
            "fee": LOWER,
        }
        await ack(publisher, update.data["sync_id"], booking_id, "ok", external_ref="PRK-FEE-1")
        [completed] = await w.wait_for(
            lambda s: s.type == "pms.sync_completed" and s.data["sync_id"] == update.data["sync_id"], timeout=60
        )
        assert completed.data["integration"] == "praktika"
        await w.settle(3.0)  # longer than the ack timeout: an acknowledged update is not resent
        assert len(w.matching(updates(booking_id))) == 1

    rows = pms_sync.get_json(f"/bookings/{booking_id}/syncs")["items"]
    assert [(r["action"], r["status"]) for r in rows] == [("cancel_booking", "completed"), ("update_fee", "completed")]


async def test_a_final_fee_lowered_twice_then_waived_is_told_each_time_and_never_resent_over_a_newer_one(
    infra: Any, publisher: Publisher, pms_sync: ServiceProcess
) -> None:
    charge_id = unique("ch")
    async with EventWatcher(infra.bootstrap, ALL_TOPICS) as w:
        _, booking_id = await cancel_at_praktika(infra, publisher, w, review_hours=None)
        await publisher.event(
            BILLING_EVENTS, "charge.created", booking_id, created(charge_id, booking_id, "due", LATE_FEE)
        )
        first = {"charge_id": charge_id, "request_id": unique("adj"), "before": LATE_FEE, "after": LOWER}
        await publisher.event(BILLING_EVENTS, "charge.adjusted", booking_id, first)
        [lowered] = await w.wait_for(updates(booking_id), timeout=60)
        assert lowered.data["fee"] == LOWER
        # no ack: the same command again, same sync_id, after the ack timeout
        resent = await w.wait_for(lambda s: updates(booking_id)(s) and s.data == lowered.data, count=2, timeout=60)
        assert {s.data["sync_id"] for s in resent} == {lowered.data["sync_id"]}

        await publisher.event(BILLING_EVENTS, "charge.adjusted", booking_id, first)  # billing redelivers it
        second = {"charge_id": charge_id, "request_id": unique("adj"), "before": LOWER, "after": LOWEST}
        await publisher.event(BILLING_EVENTS, "charge.adjusted", booking_id, second)
        [lowest] = await w.wait_for(lambda s: updates(booking_id)(s) and s.data["fee"] == LOWEST, timeout=60)
        await ack(publisher, lowest.data["sync_id"], booking_id, "ok")
        await publisher.event(
            BILLING_EVENTS,
            "charge.waived",
            booking_id,
            {"charge_id": charge_id, "booking_id": booking_id, "request_id": unique("waive")},
        )
        [waived] = await w.wait_for(lambda s: updates(booking_id)(s) and s.data["fee"] is None, timeout=60)
        assert "fee" in waived.data  # `fee: null`, as the contract says
        await ack(publisher, waived.data["sync_id"], booking_id, "ok")
        await w.wait_for(
            lambda s: s.type == "pms.sync_completed" and s.data["sync_id"] == waived.data["sync_id"], timeout=60
        )
        count_of_first = len(
            [s for s in w.matching(updates(booking_id)) if s.data["sync_id"] == lowered.data["sync_id"]]
        )
        await w.settle(4.0)  # several ack timeouts: the superseded update is resent no more
        after = w.matching(updates(booking_id))
        assert len([s for s in after if s.data["sync_id"] == lowered.data["sync_id"]]) == count_of_first
        assert len({s.data["sync_id"] for s in after}) == 3  # three changes, three syncs
        assert len([s for s in after if s.data["fee"] is None]) == 1
        assert w.matching(of(booking_id, "pms.sync_failed")) == []

    rows = pms_sync.get_json(f"/bookings/{booking_id}/syncs")["items"]
    assert sorted(r["status"] for r in rows if r["action"] == "update_fee") == ["completed", "completed", "superseded"]

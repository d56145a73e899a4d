"""pms.update_fee's rules as tables (pms_sync/domain.py): what each of billing's fee events
tells the PMS, given what pms-sync knew of the charge; a fee in review left out of the
cancellation's command; and a waiver's `fee: null` on the wire."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from pms_sync import domain
from shared.contracts import new_envelope, parse_envelope
from shared.contracts.common import Decision, Fee
from shared.contracts.pms_sync import PmsUpdateFee

FEE = Fee(amount=Decimal("45.00"), currency="AUD", code="D9987", code_system="CDT")


@pytest.mark.parametrize(
    ("known", "status", "expected"),
    [
        (None, "pending_review", ("pending_review", "note")),  # the PMS was told no fee
        (None, "due", ("final", "note")),  # due at once: it went with the cancellation
        (None, None, ("final", "note")),  # an older producer's charge.created is due
        ("pending_review", "due", ("final", "tell")),  # final after review: told now
        ("pending_review", "pending_review", (None, "ignore")),
        ("final", "due", (None, "ignore")),  # a repeat
        ("waived", "due", (None, "ignore")),  # waived stays waived
    ],
)
def test_charge_created(known: domain.ChargeState | None, status: str | None, expected: object) -> None:
    assert domain.on_charge_created(known, status) == expected


@pytest.mark.parametrize(
    ("known", "adjusted", "waived"),
    [
        ("pending_review", "note", "note"),  # in review: the PMS never had it
        ("final", "tell", "tell"),
        ("waived", "ignore", "ignore"),
        (None, "ignore", "tell"),  # unseen: no booking for an adjustment; null is right for a waiver
    ],
)
def test_charge_adjusted_and_waived(known: domain.ChargeState | None, adjusted: str, waived: str) -> None:
    assert domain.on_charge_adjusted(known) == adjusted
    assert domain.on_charge_waived(known) == waived


@pytest.mark.parametrize(("review_hours", "told"), [(None, FEE), (0, FEE), (24, None)])
def test_a_fee_in_review_is_not_told_with_the_cancellation(review_hours: int | None, told: Fee | None) -> None:
    decision = Decision(
        allowed=True,
        classification="late",
        fee=FEE,
        charge_card=False,
        deposit_action="none",
        policy_version="r1",
        review_hours=review_hours,
    )
    assert domain.fee_told(decision) == told


def test_each_fee_change_has_its_own_sync_id_and_never_a_cancellations() -> None:
    ids = {
        domain.fee_update_sync_id("bk-1", "ch-1", "final"),
        domain.fee_update_sync_id("bk-1", "ch-1", "adj-1"),
        domain.fee_update_sync_id("bk-1", "ch-1", "adj-2"),
        domain.sync_id("bk-1", "adj-1"),
    }
    assert len(ids) == 4
    assert domain.fee_update_sync_id("bk-1", "ch-1", "adj-1") == domain.fee_update_sync_id("bk-1", "ch-1", "adj-1")


@pytest.mark.parametrize("fee", [FEE, None])
def test_a_fee_update_round_trips_through_the_wire_with_a_waiver_as_null(fee: Fee | None) -> None:
    command = domain.update_fee_command("bk-1", "prac-1", "ch-1", "adj-1", fee)
    envelope = new_envelope(command, source="service/pms-sync", subject="bk-1", correlation_id=None)
    assert "fee" in envelope["data"]  # `fee: null` when waived, as CONTRACT.md says
    event = parse_envelope(json.dumps(envelope).encode(), {"pms.update_fee": PmsUpdateFee})
    assert event.payload == command

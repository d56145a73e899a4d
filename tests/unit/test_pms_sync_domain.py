"""The PMS synchronisation rules, by table: where a change goes for each integration, what the
sync command carries, what staff are told, how acks settle a sync and when it is sent again.
No infrastructure.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from pms_sync import domain
from shared.contracts.booking import BookingCancelled, BookingNoShowRecorded
from shared.contracts.common import Actor, Decision, Fee
from shared.contracts.pms_sync import PmsCancelBooking, PmsRecordNoShow

T = datetime(2031, 3, 10, 22, 0, tzinfo=UTC)
STAFF = Actor(kind="staff", id="staff-7", roles=["reception"])
FEE = Fee(amount=Decimal("45.00"), currency="AUD", code="D9987", code_system="CDT")


def cancelled(**overrides: object) -> BookingCancelled:
    fields: dict[str, object] = {
        "booking_id": "bk-1",
        "request_id": "req-1",
        "practice_id": "prac-1",
        "patient_id": "pat-1",
        "practitioner_id": "dr-lee",
        "service_code": "D1110",
        "starts_at": T,
        "ends_at": T + timedelta(minutes=30),
        "cancelled_at": T - timedelta(hours=5),
        "actor": STAFF,
        "channel": "practice",
        "status_label": "Cancelled",
        "reason_code": "illness",
        "reason_text": "Flu",
        "classification": "late",
        "decision": Decision(
            allowed=True,
            classification="late",
            fee=FEE,
            charge_card=False,
            deposit_action="none",
            policy_version="r1.s1",
        ),
    }
    return BookingCancelled.new(**(fields | overrides))


def no_show_recorded(**overrides: object) -> BookingNoShowRecorded:
    fields: dict[str, object] = {
        "booking_id": "bk-2",
        "request_id": "req-2",
        "practice_id": "prac-1",
        "patient_id": "pat-1",
        "party": "patient",
        "code": "DNA",
        "starts_at": T,
        "recorded_at": T + timedelta(minutes=20),
        "decision": Decision(
            allowed=True, classification="no_show", charge_card=False, deposit_action="none", policy_version="r1.s1"
        ),
    }
    return BookingNoShowRecorded.new(**(fields | overrides))


# --- where a change goes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("integration", "route", "topic"),
    [
        ("praktika", "sync", "pms-sync.praktika.v1"),
        ("core_practice", "sync", "pms-sync.core-practice.v1"),
        ("manual", "manual", None),
        ("none", "none", None),
        (domain.DEFAULT_INTEGRATION, "none", None),  # a practice that never configured one
    ],
)
def test_where_a_change_goes(integration: str, route: str, topic: str | None) -> None:
    assert domain.route(integration) == route
    if topic:
        assert domain.topic_of(integration) == topic


def test_one_change_of_one_booking_has_one_sync_id() -> None:
    a = domain.sync_id("bk-1", "req-1")
    assert a == domain.sync_id("bk-1", "req-1")
    assert uuid.UUID(a).version == 5
    assert len({a, domain.sync_id("bk-1", "req-2"), domain.sync_id("bk-2", "req-1")}) == 3


# --- what the sync command carries ---------------------------------------------------------------


def test_cancel_command_carries_everything_the_pms_could_store() -> None:
    command = domain.cancel_command(cancelled(), "bk-1", chart_note="Pt called in sick")
    assert isinstance(command, PmsCancelBooking)
    assert command.to_json_dict() == {
        "sync_id": domain.sync_id("bk-1", "req-1"),
        "booking_id": "bk-1",
        "practice_id": "prac-1",
        "cancelled_at": "2031-03-10T17:00:00Z",
        "actor": {"kind": "staff", "id": "staff-7", "roles": ["reception"]},
        "classification": "late",
        "reason_code": "illness",
        "reason_text": "Flu",
        "status_label": "Cancelled",
        "fee": {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"},
        "chart_note": "Pt called in sick",
    }


def test_an_occurrence_of_a_series_goes_with_its_own_sync_id_timely_and_without_the_fee() -> None:
    """Billing charges the decision's fee once, for the cancelled booking; the later occurrences
    are cancelled ahead of time, with no fee raised for them."""
    event = cancelled(series_booking_ids=["bk-1b"])
    command = domain.cancel_command(event, "bk-1b", chart_note="note")
    assert (command.booking_id, command.sync_id) == ("bk-1b", domain.sync_id("bk-1b", "req-1"))
    assert (command.classification, command.fee, command.chart_note) == ("timely", None, "note")
    assert (command.status_label, command.reason_code, command.actor) == ("Cancelled", "illness", STAFF)
    first = domain.cancel_command(event, "bk-1", chart_note="note")
    assert (first.classification, first.fee) == ("late", FEE)


@pytest.mark.parametrize(
    ("fee", "sent"),
    [
        (FEE, FEE),
        (None, None),  # waived, or a timely cancellation
        # billing raises no charge (a zero fee: the contract refuses one, the domain still guards)
        (Fee.model_construct(amount=Decimal("0.00"), currency="AUD", code="D9987", code_system="CDT"), None),
    ],
)
def test_the_command_carries_the_fee_only_when_billing_raises_one(fee: Fee | None, sent: Fee | None) -> None:
    decision = Decision(
        allowed=True, classification="late", fee=fee, charge_card=False, deposit_action="none", policy_version="r1.s1"
    )
    assert domain.cancel_command(cancelled(decision=decision), "bk-1", None).fee == sent
    no_show = no_show_recorded(decision=decision.model_copy(update={"classification": "no_show"}))
    assert domain.no_show_command(no_show, STAFF, None).fee == sent


@pytest.mark.parametrize(
    ("label", "actor"),
    [("Cancelled online", Actor(kind="patient", id="pat-1")), ("Cancelled", Actor(kind="professional", id="pro-1"))],
)
def test_cancel_command_keeps_the_label_and_actor(label: str, actor: Actor) -> None:
    command = domain.cancel_command(
        cancelled(status_label=label, actor=actor, reason_code=None, reason_text=None), "bk-1", None
    )
    assert (command.status_label, command.actor, command.reason_code, command.fee) == (label, actor, None, FEE)


def test_no_show_command_carries_the_reporter_fee_and_chart_note() -> None:
    fee = Fee(amount=Decimal("80.00"), currency="AUD", code="D9986", code_system="CDT")
    event = no_show_recorded(
        decision=Decision(
            allowed=True,
            classification="no_show",
            fee=fee,
            charge_card=True,
            deposit_action="keep",
            policy_version="r1.s1",
        )
    )
    command = domain.no_show_command(event, STAFF, "No answer on phone")
    assert isinstance(command, PmsRecordNoShow)
    assert command.to_json_dict() == {
        "sync_id": domain.sync_id("bk-2", "req-2"),
        "booking_id": "bk-2",
        "practice_id": "prac-1",
        "code": "DNA",
        "recorded_at": "2031-03-10T22:20:00Z",
        "actor": {"kind": "staff", "id": "staff-7", "roles": ["reception"]},
        "fee": {"amount": "80.00", "currency": "AUD", "code": "D9986", "code_system": "CDT"},
        "chart_note": "No answer on phone",
    }


def test_no_show_command_without_the_report_names_the_booking_service() -> None:
    command = domain.no_show_command(no_show_recorded(), None, None)
    assert command.actor == domain.UNKNOWN_REPORTER == Actor(kind="system", id="service/booking")
    assert command.chart_note is None


def test_stored_commands_read_back_unchanged() -> None:
    command = domain.cancel_command(cancelled(), "bk-1", "note")
    again = domain.COMMAND_MODELS["cancel_booking"].model_validate(command.to_json_dict())
    assert again == command


# --- a command whose upstream request was not read yet -------------------------------------------


@pytest.mark.parametrize(
    ("action", "channel", "seen", "waits"),
    [
        ("cancel_booking", "practice", True, False),
        ("cancel_booking", "practice", False, True),  # booking.events.v1 read before upstream.bookings.v1
        ("cancel_booking", "patient_portal", False, True),
        ("cancel_booking", "professional_app", False, True),
        ("cancel_booking", "system", False, False),  # the booking service's own: no request will come
        ("record_no_show", None, False, True),  # a no-show is always reported upstream
        ("record_no_show", None, True, False),
    ],
)
def test_a_command_waits_only_for_a_request_that_will_come(
    action: str, channel: str | None, seen: bool, waits: bool
) -> None:
    assert domain.waits_for_request(action, channel, request_seen=seen) is waits


def test_a_waiting_cancellation_gets_its_chart_note_and_keeps_its_actor() -> None:
    waiting = domain.cancel_command(cancelled(), "bk-1", chart_note=None)
    reporter = Actor(kind="staff", id="someone-else")
    sent = domain.with_request(waiting, reporter, "Pt called in sick")
    assert sent.to_json_dict() == waiting.to_json_dict() | {"chart_note": "Pt called in sick"}


def test_a_waiting_no_show_gets_its_reporter_and_chart_note() -> None:
    waiting = domain.no_show_command(no_show_recorded(), None, None)
    sent = domain.with_request(waiting, STAFF, "No answer on phone")
    assert (sent.actor, sent.chart_note, sent.sync_id) == (STAFF, "No answer on phone", waiting.sync_id)
    assert domain.with_request(waiting, STAFF, None).chart_note is None


# --- what staff are told ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "integration", "error", "failed", "message"),
    [
        ("cancel_booking", "manual", None, False, "Manual update required: cancel this booking in your PMS too"),
        ("record_no_show", "manual", None, False, "Manual update required: record this no-show in your PMS too"),
        (
            "cancel_booking",
            "praktika",
            "no acknowledgement after 5 attempts",
            True,
            "Manual update required: cancel this booking in Praktika too "
            "(Praktika did not confirm it: no acknowledgement after 5 attempts)",
        ),
        (
            "record_no_show",
            "core_practice",
            "locked",
            True,
            "Manual update required: record this no-show in Core Practice too (Core Practice did not confirm it: locked)",
        ),
        (
            "cancel_booking",
            "core_practice",
            None,
            True,
            "Manual update required: cancel this booking in Core Practice too (Core Practice did not confirm it)",
        ),
    ],
)
def test_manual_update_messages(action: str, integration: str, error: str | None, failed: bool, message: str) -> None:
    update = domain.manual_update("bk-1", "prac-1", integration, action, error, failed=failed)
    assert update.to_json_dict() == {
        "booking_id": "bk-1",
        "practice_id": "prac-1",
        "integration": integration,
        "action": action,
        "message": message,
    }


@pytest.mark.parametrize(
    ("integration", "name"),
    [("praktika", "Praktika"), ("core_practice", "Core Practice"), ("manual", "your PMS"), ("none", "your PMS")],
)
def test_messages_name_the_pms_when_it_is_known(integration: str, name: str) -> None:
    assert domain.pms_name(integration) == name


def test_a_long_pms_error_is_cut_short_in_the_message() -> None:
    message = domain.manual_message("cancel_booking", "praktika", "x" * 1000, failed=True)
    assert message.startswith(
        "Manual update required: cancel this booking in Praktika too (Praktika did not confirm it: "
    )
    assert len(message) < 300


# --- acks and retries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "ack", "expected"),
    [
        ("sent", "ok", "complete"),
        ("sent", "error", "fail"),
        ("waiting", "ok", "ignore"),  # never sent: no connector can have it
        ("completed", "ok", "ignore"),  # a duplicate ack
        ("completed", "error", "ignore"),
        ("failed", "ok", "ignore"),  # late: the practice was already asked to update by hand
        ("failed", "error", "ignore"),
    ],
)
def test_the_first_ack_settles_a_sync(status: str, ack: str, expected: str) -> None:
    assert domain.on_ack(status, ack) == expected


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 60.0), (2, 120.0), (3, 240.0), (4, 480.0), (5, 960.0), (7, 3600.0), (30, 3600.0)],
)
def test_each_send_waits_twice_as_long_for_its_ack(attempt: int, expected: float) -> None:
    """The nominal wait (the jitter's upper end) doubles; with jitter, between half and all of it."""
    assert domain.ack_wait_seconds(attempt, timeout_seconds=60, max_backoff_seconds=3600, rng=lambda: 1.0) == expected
    assert (
        domain.ack_wait_seconds(attempt, timeout_seconds=60, max_backoff_seconds=3600, rng=lambda: 0.0) == expected / 2
    )
    for _ in range(200):
        assert (
            expected / 2 <= domain.ack_wait_seconds(attempt, timeout_seconds=60, max_backoff_seconds=3600) <= expected
        )


def test_ack_waits_are_spread() -> None:
    """Syncs sent together while a connector was down are not resent in the same second."""
    waits = {round(domain.ack_wait_seconds(2, timeout_seconds=60, max_backoff_seconds=3600), 1) for _ in range(50)}
    assert len(waits) > 10


@pytest.mark.parametrize(
    ("attempts", "max_attempts", "expected"),
    [(1, 5, "resend"), (4, 5, "resend"), (5, 5, "give_up"), (1, 2, "resend"), (2, 2, "give_up"), (1, 1, "give_up")],
)
def test_overdue_sync_is_resent_until_out_of_attempts(attempts: int, max_attempts: int, expected: str) -> None:
    assert domain.on_timeout(attempts, max_attempts) == expected


def test_retry_schedule_of_one_sync() -> None:
    """The whole life of an unacknowledged sync with the defaults: 5 sends, then give up."""
    waits, attempts = [], 1
    while True:
        waits.append(domain.ack_wait_seconds(attempts, timeout_seconds=60, max_backoff_seconds=3600, rng=lambda: 1.0))
        if domain.on_timeout(attempts, 5) == "give_up":
            break
        attempts += 1
    # The nominal schedule; with jitter each wait is between half and all of it (930–1860 s in all).
    assert (attempts, waits, sum(waits)) == (5, [60, 120, 240, 480, 960], 1860)
    assert domain.no_ack_error(attempts) == "no acknowledgement after 5 attempts"
    assert domain.no_ack_error(1) == "no acknowledgement after 1 attempt"

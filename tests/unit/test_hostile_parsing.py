"""Hostile input cannot stop the pipeline: every class of bad record is a ContractViolation with
a reason (never another exception), dead letters and outbox rows always fit the broker, and a
request's own time is believed only within its tolerance (docs/rules.md, "Time and trust")."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from booking.domain import TimeTrust
from cancellation_policy.domain import assess
from shared import outbox, topics
from shared.contracts.booking import BookingSnapshot, CancellationAssessmentRequested
from shared.contracts.common import Actor
from shared.contracts.deadletter import ORIGINAL_VALUE_MAX_BYTES, MessageDeadLettered
from shared.contracts.envelope import MAX_MESSAGE_BYTES, MAX_NESTING_DEPTH, ContractViolation, parse_envelope
from shared.contracts.registry import models_for
from shared.contracts.upstream import PracticeSettings

BOOKINGS = models_for(topics.UPSTREAM_BOOKINGS)


def scheduled(**data_overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "booking_id": f"bk-{uuid.uuid4()}",
        "practice_id": "pr-1",
        "starts_at": "2026-12-02T09:00:00Z",
        "ends_at": "2026-12-02T09:30:00Z",
        "practitioner_id": "dr-1",
        "service_code": "D1110",
        "patient": {"patient_id": "pat-1", "first_name": "Ana", "portal_account": True, "card_on_file": False},
    }
    data.update(data_overrides)
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "type": "booking.scheduled",
        "source": "upstream/test",
        "subject": data["booking_id"],
        "time": "2026-12-01T09:00:00Z",
        "datacontenttype": "application/json",
        "data": data,
    }


def test_a_healthy_message_parses() -> None:
    event = parse_envelope(json.dumps(scheduled()).encode(), BOOKINGS)
    assert event.type == "booking.scheduled"


def deep(levels: int) -> object:
    value: object = "x"
    for _ in range(levels):
        value = [value]
    return value


HOSTILE: list[tuple[str, bytes | None, str]] = [
    ("overflowing start", json.dumps(scheduled(starts_at="9999-12-31T23:59:59-23:59")).encode(), "starts_at"),
    ("year 1 start", json.dumps(scheduled(starts_at="0001-01-01T00:00:00+00:00")).encode(), "starts_at"),
    ("overflowing envelope time", json.dumps({**scheduled(), "time": "9999-12-31T23:59:59-23:59"}).encode(), "time"),
    ("nested thousands deep", b'{"specversion":"1.0","data":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested"),
    ("nested past the bound", json.dumps(scheduled(extra=deep(MAX_NESTING_DEPTH + 1))).encode(), "nested"),
    ("a number with thousands of digits", b'{"specversion":"1.0","id":' + b"9" * 5000 + b"}", "JSON"),
    ("over the size bound", json.dumps(scheduled(service_code="x" * MAX_MESSAGE_BYTES)).encode(), "bytes"),
    ("not UTF-8", b"\xff\xfe{}", "UTF-8"),
    ("not JSON", b"{nope", "not JSON"),
    ("a JSON list", b"[1, 2]", "JSON object"),
    ("tombstone", None, "tombstone"),
    ("NUL in text", json.dumps(scheduled(service_code="a\u0000b")).encode(), "NUL"),
    ("wrong type for an object", json.dumps(scheduled(patient=["x"])).encode(), "patient"),
    ("envelope id of 10 000 characters", json.dumps({**scheduled(), "id": "i" * 10_000}).encode(), "id"),
    ("envelope id with a control character", json.dumps({**scheduled(), "id": "ab\ncd"}).encode(), "id"),
    (
        "envelope type with a control character",
        json.dumps({**scheduled(), "type": "booking.scheduled\t"}).encode(),
        "type",
    ),
    ("float infinity", json.dumps(scheduled(deposit={"amount": 1e400, "currency": "EUR"})).encode(), "deposit"),
]


@pytest.mark.parametrize(("name", "raw", "says"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_every_hostile_class_is_a_contract_violation_with_a_reason(name: str, raw: bytes | None, says: str) -> None:
    with pytest.raises(ContractViolation) as caught:
        parse_envelope(raw, BOOKINGS)
    assert says.lower() in str(caught.value).lower()
    assert len(str(caught.value)) < 1000  # a reason, never the input echoed back


def test_a_violation_never_quotes_the_offending_value() -> None:
    secret = "ana.lopez@example.com"
    raw = json.dumps(scheduled(patient={"patient_id": "p", "first_name": secret, "portal_account": "maybe"})).encode()
    with pytest.raises(ContractViolation) as caught:
        parse_envelope(raw, BOOKINGS)
    assert "portal_account" in str(caught.value) and secret not in str(caught.value)


# --- dead letters always fit -----------------------------------------------------------------------


def dead_letter_of(value: bytes | None) -> MessageDeadLettered:
    return MessageDeadLettered.of(
        service="booking",
        topic=topics.UPSTREAM_BOOKINGS,
        partition=1,
        offset=7,
        key=b"k",
        value=value,
        error="why",
        at=datetime.now(UTC),
    )


@pytest.mark.parametrize(
    "value",
    [
        b"x" * 700_000,  # the 700 KB message of the report: once, and within the limit
        "é".encode() * 400_000,  # non-ASCII text: escaping would double it
        bytes(range(256)) * 4000,  # not UTF-8
        "\u0001".encode() * 300_000,  # control characters: escaping makes six of one
    ],
    ids=["ascii-700KB", "non-ascii-800KB", "binary-1MB", "control-300KB"],
)
def test_a_dead_letter_always_fits_the_broker_and_keeps_the_original_once(value: bytes) -> None:
    letter = dead_letter_of(value)
    event = outbox.outgoing(
        topics.dead_letter_topic("booking"), letter, subject="k", source="service/booking", correlation_id=None
    )
    assert len(event.body) <= outbox.MAX_EVENT_BYTES
    assert (letter.original_value_text is None) != (letter.original_value_base64 is None)  # once
    assert letter.original_value_length == len(value)
    assert letter.original_value_sha256 == hashlib.sha256(value).hexdigest()
    kept = letter.original_value()
    assert kept == value[:ORIGINAL_VALUE_MAX_BYTES]
    assert letter.original_value_truncated == (len(value) > ORIGINAL_VALUE_MAX_BYTES)


def test_a_small_dead_letter_keeps_the_exact_bytes() -> None:
    text = dead_letter_of(b'{"a": "b"}')
    binary = dead_letter_of(b"\xff\x00\x01")
    assert text.original_value_text == '{"a": "b"}' and text.original_value_base64 is None
    assert base64.b64decode(binary.original_value_base64 or "") == b"\xff\x00\x01"
    assert not text.original_value_truncated and dead_letter_of(None).original_value() is None


def test_an_event_too_large_for_the_broker_is_refused_when_written() -> None:
    huge = dead_letter_of(b"x").model_copy(update={"error": "e" * (outbox.MAX_EVENT_BYTES + 1)})
    with pytest.raises(outbox.EventTooLarge, match="at most"):
        outbox.outgoing("dlq.booking.v1", huge, subject="k", source="service/booking", correlation_id=None)
    with pytest.raises(outbox.EventTooLarge):
        outbox.outgoing("dlq.booking.v1", dead_letter_of(b"x"), subject="k" * 2000, source="s", correlation_id=None)


# --- time and trust --------------------------------------------------------------------------------

RECORD = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TRUST = TimeTrust()


@pytest.mark.parametrize(
    ("claimed", "decided"),
    [
        (RECORD, RECORD),
        (RECORD - timedelta(minutes=10), RECORD - timedelta(minutes=10)),  # at the edge: believed
        (RECORD - timedelta(minutes=10, seconds=1), RECORD),  # past it: the record's time
        (RECORD - timedelta(days=2), RECORD),  # the backdated request of the report
        (RECORD + timedelta(minutes=2), RECORD + timedelta(minutes=2)),
        (RECORD + timedelta(minutes=2, seconds=1), RECORD),
        (RECORD + timedelta(days=30), RECORD),
    ],
)
def test_a_claimed_time_is_believed_only_within_the_tolerance(claimed: datetime, decided: datetime) -> None:
    assert TRUST.decide_at(claimed, RECORD) == decided


def test_without_a_record_time_the_claim_stands() -> None:
    assert TRUST.decide_at(RECORD - timedelta(days=2), None) == RECORD - timedelta(days=2)


def staff_request(
    starts_at: datetime, requested_at: datetime, claimed_at: datetime | None = None
) -> CancellationAssessmentRequested:
    return CancellationAssessmentRequested.new(
        booking_id="b-1",
        request_id="r-1",
        practice_id="p-1",
        kind="cancellation",
        booking=BookingSnapshot.new(
            starts_at=starts_at,
            ends_at=starts_at + timedelta(minutes=30),
            status="scheduled",
            patient_portal_account=True,
            patient_card_on_file=True,
        ),
        requested_at=requested_at,
        actor=Actor(kind="staff", id="s-1"),
        channel="practice",
        claimed_at=claimed_at,
    )


def test_a_backdated_request_decided_at_the_record_time_is_late_and_says_why() -> None:
    starts = RECORD + timedelta(hours=10)
    claimed = RECORD - timedelta(days=2)
    believed = assess(staff_request(starts, claimed), PracticeSettings())
    assert believed.classification == "timely"  # what the claim alone would have bought
    decided = assess(staff_request(starts, TRUST.decide_at(claimed, RECORD), claimed_at=claimed), PracticeSettings())
    assert decided.classification == "late"
    assert "not the time it claims" in decided.explanation and "2026-11-29 09:00" in decided.explanation


# Lead is elapsed time: across a daylight-saving change a 24-hour window is 24 real hours, not a
# wall-clock day. Each row: a booking at 09:00 local the day after a change, a request at 09:00
# local the day before it (one wall-clock day earlier).
DST = [
    ("Europe/Berlin", datetime(2026, 3, 28, 9, 0), 23),  # spring forward: the day has 23 hours
    ("Europe/Berlin", datetime(2026, 10, 24, 9, 0), 25),  # fall back: 25 hours
    ("Australia/Sydney", datetime(2026, 10, 3, 9, 0), 23),  # spring forward (October)
    ("Australia/Sydney", datetime(2026, 4, 4, 9, 0), 25),  # fall back (April)
]


@pytest.mark.parametrize(("zone", "requested_local", "real_hours"), DST, ids=[f"{z}-{h}h" for z, _, h in DST])
def test_lead_is_elapsed_time_across_daylight_saving_changes(
    zone: str, requested_local: datetime, real_hours: int
) -> None:
    tz = ZoneInfo(zone)
    requested = requested_local.replace(tzinfo=tz).astimezone(UTC)
    starts = (requested_local + timedelta(days=1)).replace(tzinfo=tz).astimezone(UTC)
    assert starts - requested == timedelta(hours=real_hours)
    decision = assess(staff_request(starts, requested), PracticeSettings())  # late window: 24 h
    assert decision.classification == ("late" if real_hours < 24 else "timely")

"""CloudEvents in binary mode (the Kafka protocol binding: `ce_<attribute>` headers,
`content-type` for datacontenttype, the value the data alone) parse to the same event as in
structured mode, and a hostile header is a ContractViolation whose reason never quotes it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from shared import topics
from shared.contracts.envelope import (
    MAX_HEADER_VALUE_BYTES,
    MAX_HEADERS,
    ContractViolation,
    parse_envelope,
    parse_record,
)
from shared.contracts.registry import models_for

BOOKINGS = models_for(topics.UPSTREAM_BOOKINGS)
SECRET = "0048-SECRET-7"  # a value that must never appear in a reason


def structured() -> dict[str, Any]:
    booking_id = f"bk-{uuid.uuid4()}"
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "type": "booking.scheduled",
        "source": "upstream/test",
        "subject": booking_id,
        "time": "2026-12-01T09:00:00Z",
        "datacontenttype": "application/json",
        "correlationid": f"corr-{uuid.uuid4()}",
        "data": {
            "booking_id": booking_id,
            "practice_id": "pr-1",
            "starts_at": "2026-12-02T09:00:00Z",
            "ends_at": "2026-12-02T09:30:00Z",
            "practitioner_id": "dr-1",
            "service_code": "D1110",
            "patient": {"patient_id": "pat-1", "first_name": "Ana", "portal_account": True, "card_on_file": False},
        },
    }


def binary(envelope: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes | None]]]:
    """The same event in binary mode, as a producer in another language would send it."""
    headers: list[tuple[str, bytes | None]] = [
        (f"ce_{name}", str(value).encode())
        for name, value in envelope.items()
        if name not in ("data", "datacontenttype")
    ]
    headers.append(("content-type", b"application/json"))
    return json.dumps(envelope["data"]).encode(), headers


def violation(value: bytes | None, headers: list[tuple[str, bytes | None]]) -> str:
    with pytest.raises(ContractViolation) as caught:
        parse_record(value, headers, BOOKINGS)
    return str(caught.value)


def test_a_binary_record_is_the_same_event_as_its_structured_form() -> None:
    envelope = structured()
    value, headers = binary(envelope)
    from_binary = parse_record(value, headers, BOOKINGS)
    from_structured = parse_envelope(json.dumps(envelope).encode(), BOOKINGS)
    assert from_binary == from_structured
    assert from_binary.correlation_id == envelope["correlationid"]  # ce_correlationid: an extension


def test_a_structured_record_still_parses_with_or_without_headers() -> None:
    envelope = structured()
    raw = json.dumps(envelope).encode()
    for headers in (None, [], [("content-type", b"application/cloudevents+json")]):
        assert parse_record(raw, headers, BOOKINGS).id == envelope["id"]


def test_the_content_type_says_structured_even_beside_ce_headers() -> None:
    envelope = structured()
    _, headers = binary(envelope)
    headers[-1] = ("content-type", b"application/cloudevents+json; charset=UTF-8")
    assert parse_record(json.dumps(envelope).encode(), headers, BOOKINGS).id == envelope["id"]


def test_without_a_content_type_binary_data_is_json_and_unknown_extensions_are_ignored() -> None:
    envelope = structured()
    value, headers = binary(envelope)
    headers = [h for h in headers if h[0] != "content-type"] + [("ce_traceparent", b"00-abc-def-01")]
    event = parse_record(value, headers, BOOKINGS)
    assert event.envelope.datacontenttype == "application/json" and event.id == envelope["id"]


def test_a_binary_payload_is_held_to_the_contract_like_a_structured_one() -> None:
    envelope = structured()
    envelope["data"]["starts_at"] = "not a time"
    value, headers = binary(envelope)
    reason = violation(value, headers)
    assert "booking.scheduled payload breaks the contract" in reason and "starts_at" in reason
    assert "not a time" not in reason


def with_header(
    name: str, value: bytes | None, *, replace: bool = True
) -> tuple[bytes, list[tuple[str, bytes | None]]]:
    payload, headers = binary(structured())
    if replace:
        headers = [h for h in headers if h[0] != name]
    return payload, [*headers, (name, value)]


Record = tuple[bytes | None, list[tuple[str, bytes | None]]]
KEEP: Any = object()


def changed(*, value: Any = KEEP, add: tuple[tuple[str, bytes | None], ...] = (), drop: str = "") -> Record:
    """A healthy binary record with its value replaced, headers added, or one header dropped."""
    payload, headers = binary(structured())
    return (payload if value is KEEP else value), [*(h for h in headers if h[0] != drop), *add]


HOSTILE: list[tuple[str, Record, str]] = [
    ("too many headers", changed(add=(("x-pad", SECRET.encode()),) * MAX_HEADERS), "headers"),
    ("an id header too long", with_header("ce_id", SECRET.encode() * MAX_HEADER_VALUE_BYTES), "ce_id"),
    ("an id that is not UTF-8", with_header("ce_id", b"\xff" + SECRET.encode()), "UTF-8"),
    ("a subject with a control character", with_header("ce_subject", SECRET.encode() + b"\x1b[2J"), "control"),
    ("a type without a value", with_header("ce_type", None), "no value"),
    ("an id twice", with_header("ce_id", SECRET.encode(), replace=False), "more than once"),
    ("an extension twice", changed(add=(("ce_zz", b"1"), ("ce_zz", b"2"))), "extension"),
    ("an attribute name outside the binding", with_header("ce_" + SECRET, b"1"), "attribute name"),
    ("a header name of a kilobyte", with_header("x" * 1024, b"1"), "header name"),
    ("the data in a header", with_header("ce_data", SECRET.encode()), "record value"),
    ("a content type other than JSON", with_header("content-type", b"text/plain"), "application/json"),
    ("a content type twice", with_header("content-type", b"application/json", replace=False), "content-type"),
    ("a spec version we do not speak", with_header("ce_specversion", b"0.3"), "specversion"),
    ("a time that is not one", with_header("ce_time", SECRET.encode()), "time"),
    ("no time at all", changed(drop="ce_time"), "time"),
    ("an empty value", changed(value=None), "empty record value"),
    ("a value that is a JSON list", changed(value=b"[1, 2]"), "JSON object"),
    ("a value that is not UTF-8", changed(value=b"\xff\xfe{"), "UTF-8"),
    ("a value nested 5000 deep", changed(value=b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"), "nested"),
    ("an unknown type", with_header("ce_type", b"booking.teleported"), "unknown event type"),
]


@pytest.mark.parametrize(("name", "record", "says"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_every_hostile_binary_record_is_a_violation_that_never_quotes_it(name: str, record: Record, says: str) -> None:
    reason = violation(*record)
    assert says.lower() in reason.lower(), reason
    assert SECRET not in reason and SECRET.lower() not in reason.lower()
    assert len(reason) < 600

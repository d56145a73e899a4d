"""Trace context in the envelope (the CloudEvents distributed-tracing extension), and the spans of
shared.tracing: a malformed traceparent is dropped and the message still handled in either mode;
what is emitted carries the handling span's context; the relay's record carries its publish
span's; and with tracing off nothing is built, but a context that came in is handed on."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared import outbox, topics, tracing
from shared.consumer import Unit
from shared.contracts.envelope import (
    MAX_HEADER_VALUE_BYTES,
    parse_envelope,
    parse_record,
    valid_traceparent,
    valid_tracestate,
)
from shared.contracts.registry import models_for
from shared.contracts.scoring import HoldLifted

BOOKINGS = models_for(topics.UPSTREAM_BOOKINGS)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def structured(**attributes: Any) -> dict[str, Any]:
    booking_id = f"bk-{uuid.uuid4()}"
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "type": "booking.scheduled",
        "source": "upstream/test",
        "subject": booking_id,
        "time": "2026-12-01T09:00:00Z",
        "data": {
            "booking_id": booking_id,
            "practice_id": "pr-1",
            "starts_at": "2026-12-02T09:00:00Z",
            "ends_at": "2026-12-02T09:30:00Z",
            "practitioner_id": "dr-1",
            "service_code": "D1110",
            "patient": {"patient_id": "pat-1", "first_name": "Ana", "portal_account": True, "card_on_file": False},
        },
        **attributes,
    }


def binary(envelope: dict[str, Any], *extra: tuple[str, bytes | None]) -> tuple[bytes, list[tuple[str, bytes | None]]]:
    headers: list[tuple[str, bytes | None]] = [
        (f"ce_{name}", str(value).encode()) for name, value in envelope.items() if name != "data"
    ]
    return json.dumps(envelope["data"]).encode(), [*headers, *extra, ("content-type", b"application/json")]


# --- the W3C forms --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TRACEPARENT, TRACEPARENT),
        (f"00-{TRACE_ID}-{PARENT_ID}-00", f"00-{TRACE_ID}-{PARENT_ID}-00"),  # not sampled: still a context
        (f"01-{TRACE_ID}-{PARENT_ID}-01-what-comes-later", TRACEPARENT),  # a later version: its first fields
        (f"00-{TRACE_ID}-{PARENT_ID}-01-more", None),  # version 00 has nothing after the flags
        (f"ff-{TRACE_ID}-{PARENT_ID}-01", None),  # version ff is invalid
        (f"00-{'0' * 32}-{PARENT_ID}-01", None),  # all-zero trace id
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),  # all-zero parent id
        (TRACEPARENT.upper(), None),  # lower-case hex only
        ("00-abc-def-01", None),
        (f"00-{TRACE_ID}-{PARENT_ID}-01\n", None),
        (f"01-{TRACE_ID}-{PARENT_ID}-01-{'x' * 300}", None),  # longer than any envelope text
        ("", None),
        (42, None),
        (None, None),
        ({"traceparent": TRACEPARENT}, None),
    ],
)
def test_a_traceparent_is_the_w3c_form_or_nothing(value: object, expected: str | None) -> None:
    assert valid_traceparent(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("congo=t61rcWkgMzE", "congo=t61rcWkgMzE"),
        ("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ("tenant@vendor=x", "tenant@vendor=x"),
        ('k="quoted\\value"', 'k="quoted\\value"'),  # quotes and backslashes are allowed values
        ("a=b,,c=d", "a=b,c=d"),  # empty members are allowed and dropped
        ("Upper=x", None),
        ("k=", None),
        ("k=a,b", None),
        ("k=tab\there", None),
        (",".join(f"k{i}=v" for i in range(33)), None),  # over 32 members
        ("k=" + "v" * 600, None),
        ("", None),
        (7, None),
    ],
)
def test_a_tracestate_is_a_w3c_list_or_nothing(value: object, expected: str | None) -> None:
    assert valid_tracestate(value) == expected


# --- structured and binary mode: dropped, never refused -----------------------------------------


def test_a_structured_event_carries_its_trace_context() -> None:
    event = parse_envelope(json.dumps(structured(traceparent=TRACEPARENT, tracestate="a=1")).encode(), BOOKINGS)
    assert (event.traceparent, event.tracestate) == (TRACEPARENT, "a=1")


@pytest.mark.parametrize("traceparent", ["00-abc-def-01", 17, ["x"], {"a": 1}, "\u0000", "z" * 10_000])
def test_a_malformed_structured_traceparent_is_dropped_and_the_event_kept(traceparent: object) -> None:
    envelope = structured(traceparent=traceparent, tracestate="a=1")
    event = parse_envelope(json.dumps(envelope).encode(), BOOKINGS)
    assert event.id == envelope["id"]
    assert (event.traceparent, event.tracestate) == (None, None)  # no tracestate without its traceparent


def test_a_malformed_tracestate_alone_is_dropped() -> None:
    event = parse_envelope(json.dumps(structured(traceparent=TRACEPARENT, tracestate="A=B")).encode(), BOOKINGS)
    assert (event.traceparent, event.tracestate) == (TRACEPARENT, None)


def test_binary_mode_reads_the_ce_trace_headers() -> None:
    value, headers = binary(structured(), ("ce_traceparent", TRACEPARENT.encode()), ("ce_tracestate", b"a=1"))
    event = parse_record(value, headers, BOOKINGS)
    assert (event.traceparent, event.tracestate) == (TRACEPARENT, "a=1")


@pytest.mark.parametrize(
    "trace_headers",
    [
        [("ce_traceparent", b"00-abc-def-01")],
        [("ce_traceparent", None)],
        [("ce_traceparent", b"\xff\xfe")],  # not UTF-8
        [("ce_traceparent", b"00-\x01")],  # a control character
        [("ce_traceparent", b"0" * (MAX_HEADER_VALUE_BYTES + 1))],  # over a header's bound
        [("ce_traceparent", TRACEPARENT.encode()), ("ce_traceparent", TRACEPARENT.encode())],  # twice
        [("ce_traceparent", TRACEPARENT.encode()), ("ce_traceparent", b"\x00")],
    ],
    ids=["malformed", "no-value", "not-utf8", "control", "too-long", "twice", "twice-one-bad"],
)
def test_a_malformed_ce_traceparent_header_is_dropped_and_the_event_kept(
    trace_headers: list[tuple[str, bytes | None]],
) -> None:
    envelope = structured()
    value, headers = binary(envelope, *trace_headers)
    event = parse_record(value, headers, BOOKINGS)
    assert event.id == envelope["id"] and event.traceparent is None


# --- tracing on: the spans and the context they hand on -------------------------------------------


@dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp: int = 0
    headers: Any = ()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.enable(None)
        provider.shutdown()


def _hold_lifted() -> HoldLifted:
    return HoldLifted.new(hold_id=str(uuid.uuid4()), professional_id="pro-1", cause="expired")


def _consume_and_handle(record: FakeRecord) -> outbox.OutgoingEvent:
    """What the recipe does for one record (shared.consumer): parse, consume span, unit, handle
    span, emit; then the batch commits."""
    event = parse_record(record.value, record.headers, BOOKINGS)
    batch = tracing.consume("booking", [(record, event)])
    traceparent, tracestate = tracing.record_context(record, event)
    unit: Unit[Any] = Unit(
        conn=None,  # type: ignore[arg-type]  # the handler below touches no database
        service="booking",
        deps=None,
        event=event,
        traceparent=traceparent,
        tracestate=tracestate,
    )

    async def schedule(unit: Unit[Any], payload: Any) -> None: ...

    with tracing.handling([unit], schedule, event.type):
        unit.emit(topics.SCORING_EVENTS, _hold_lifted(), subject="pro-1")
    tracing.consumed(batch)
    [emitted] = unit.emitted
    return emitted


def test_consume_and_handle_spans_continue_the_incoming_trace(spans: InMemorySpanExporter) -> None:
    envelope = structured(traceparent=TRACEPARENT, tracestate="a=1")
    record = FakeRecord(topics.UPSTREAM_BOOKINGS, 3, 41, json.dumps(envelope).encode())
    emitted = _consume_and_handle(record)

    by_name = {span.name: span for span in spans.get_finished_spans()}
    consume, handle = by_name[f"consume {topics.UPSTREAM_BOOKINGS}"], by_name["handle booking.scheduled"]
    assert consume.kind == SpanKind.CONSUMER
    assert consume.context.trace_id == handle.context.trace_id == int(TRACE_ID, 16)
    assert consume.parent is not None and consume.parent.span_id == int(PARENT_ID, 16) and consume.parent.is_remote
    assert handle.parent is not None and handle.parent.span_id == consume.context.span_id
    assert dict(consume.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "consume",
        "messaging.destination.name": topics.UPSTREAM_BOOKINGS,
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 41,
        "messaging.consumer.group.name": "booking",
        "messaging.message.id": envelope["id"],
        "cloudevents.event_id": envelope["id"],
        "cloudevents.event_type": "booking.scheduled",
    }
    # What the handler emitted carries the handle span's context, and the tracestate with it.
    assert emitted.traceparent == f"00-{TRACE_ID}-{handle.context.span_id:016x}-01"
    assert emitted.tracestate == "a=1"
    assert "traceparent" not in emitted.body  # kept beside the body, added by the relay


def test_no_span_holds_a_payload_value(spans: InMemorySpanExporter) -> None:
    envelope = structured()
    record = FakeRecord(topics.UPSTREAM_BOOKINGS, 0, 1, json.dumps(envelope).encode())
    _consume_and_handle(record)
    values = json.dumps(
        [dict(span.attributes or {}) for span in spans.get_finished_spans()]
        + [s.name for s in spans.get_finished_spans()]
    )
    for secret in ("Ana", "pat-1", "pr-1", "dr-1", envelope["subject"]):
        assert secret not in values


def test_without_an_incoming_traceparent_a_new_trace_begins(spans: InMemorySpanExporter) -> None:
    record = FakeRecord(topics.UPSTREAM_BOOKINGS, 0, 1, json.dumps(structured()).encode())
    emitted = _consume_and_handle(record)
    consume = next(s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER)
    assert consume.parent is None
    assert emitted.traceparent is not None and emitted.traceparent.split("-")[1] == f"{consume.context.trace_id:032x}"


def test_a_contract_violation_has_a_consume_span_marked_failed(spans: InMemorySpanExporter) -> None:
    record = FakeRecord(topics.UPSTREAM_BOOKINGS, 0, 9, b"not json")
    batch = tracing.consume("booking", [(record, ValueError("stands for a ContractViolation"))])  # type: ignore[list-item]
    tracing.consumed(batch)
    [consume] = spans.get_finished_spans()
    assert consume.status.is_ok is False and (consume.attributes or {})["error.type"] == "contract_violation"


def test_a_failing_handler_marks_its_span_with_the_error_type_only(spans: InMemorySpanExporter) -> None:
    record = FakeRecord(topics.UPSTREAM_BOOKINGS, 0, 1, json.dumps(structured()).encode())
    event = parse_record(record.value, (), BOOKINGS)
    unit: Unit[Any] = Unit(conn=None, service="booking", deps=None, event=event)  # type: ignore[arg-type]
    with pytest.raises(KeyError), tracing.handling([unit], "h", event.type):
        raise KeyError("ana@example.test")
    [handle] = spans.get_finished_spans()
    assert (handle.attributes or {})["error.type"] == "KeyError"
    assert "ana@example.test" not in json.dumps(
        [dict(handle.attributes or {}), handle.status.description, handle.events and [e.name for e in handle.events]]
    )


def test_the_relay_publishes_under_the_emitting_span_and_sends_its_own_context(spans: InMemorySpanExporter) -> None:
    record = FakeRecord(topics.UPSTREAM_BOOKINGS, 0, 1, json.dumps(structured(traceparent=TRACEPARENT)).encode())
    emitted = _consume_and_handle(record)
    row = {
        "id": uuid.UUID(emitted.id),
        "topic": emitted.topic,
        "type": "hold.lifted",
        "traceparent": emitted.traceparent,
        "tracestate": emitted.tracestate,
    }
    span, traceparent, tracestate = tracing.publish("booking", row)
    tracing.published(span, type("Metadata", (), {"partition": 2, "offset": 7})())
    publish = next(s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER)
    handle = next(s for s in spans.get_finished_spans() if s.name.startswith("handle"))
    assert publish.parent is not None and publish.parent.span_id == handle.context.span_id
    assert publish.context.trace_id == int(TRACE_ID, 16)
    assert traceparent == f"00-{TRACE_ID}-{publish.context.span_id:016x}-01" and tracestate is None
    attributes = dict(publish.attributes or {})
    assert attributes["messaging.message.id"] == emitted.id and attributes["messaging.kafka.offset"] == 7
    assert attributes["messaging.destination.partition.id"] == "2"

    # The record it sends is the envelope with the publish span's context: what the next
    # service's consume span will be a child of.
    sent = json.loads(outbox.with_trace_context(json.dumps(emitted.envelope), traceparent, 'k="q"'))
    assert sent == {**emitted.envelope, "traceparent": traceparent, "tracestate": 'k="q"'}
    assert parse_envelope(json.dumps(sent).encode(), models_for(topics.SCORING_EVENTS)).traceparent == traceparent


# --- tracing off -------------------------------------------------------------------------------


def test_off_nothing_is_built_and_the_incoming_context_is_handed_on() -> None:
    assert not tracing.enabled()
    record = FakeRecord(
        topics.UPSTREAM_BOOKINGS, 0, 1, json.dumps(structured(traceparent=TRACEPARENT, tracestate="a=1")).encode()
    )
    event = parse_record(record.value, (), BOOKINGS)
    assert tracing.consume("booking", [(record, event)]) is None
    emitted = _consume_and_handle(record)
    assert (emitted.traceparent, emitted.tracestate) == (TRACEPARENT, "a=1")
    row = {"id": uuid.uuid4(), "topic": "t", "type": "x", "traceparent": TRACEPARENT, "tracestate": None}
    assert tracing.publish("booking", row) == (None, TRACEPARENT, None)


def test_an_event_without_trace_context_is_sent_as_it_was_stored() -> None:
    body = '{"id": "e-1", "data": {"a": 1}}'
    assert outbox.with_trace_context(body, None, None) is body


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_off_unless_a_collector_is_named(environ: dict[str, str], on: bool) -> None:
    assert tracing.configure("booking", environ) is on
    assert not tracing.enabled()


def test_only_otlp_over_http_protobuf_is_accepted() -> None:
    with pytest.raises(ValueError, match="http/protobuf"):
        tracing.configure(
            "booking", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        )
    assert not tracing.enabled()


def test_the_resource_names_the_service_unless_otel_service_name_says_otherwise() -> None:
    exporter = InMemorySpanExporter()
    assert tracing.new_provider("billing", exporter, {}).resource.attributes["service.name"] == "billing"


def test_a_call_to_a_provider_is_a_client_span_in_the_current_trace(spans: InMemorySpanExporter) -> None:
    record = FakeRecord(topics.UPSTREAM_BOOKINGS, 0, 1, json.dumps(structured(traceparent=TRACEPARENT)).encode())
    event = parse_record(record.value, (), BOOKINGS)
    unit: Unit[Any] = Unit(conn=None, service="notification", deps=None, event=event, traceparent=TRACEPARENT)  # type: ignore[arg-type]
    with tracing.handling([unit], "h", event.type), pytest.raises(ConnectionError):
        with tracing.external_call("smtp send", "smtp"):
            pass
        with tracing.external_call("sms send", "sms"):
            raise ConnectionError("+61400000000 unreachable")
    smtp, sms, handle = spans.get_finished_spans()
    assert (smtp.name, smtp.kind, sms.kind) == ("smtp send", SpanKind.CLIENT, SpanKind.CLIENT)
    assert smtp.parent is not None and smtp.parent.span_id == handle.context.span_id
    assert smtp.context.trace_id == int(TRACE_ID, 16) and smtp.status.is_ok
    assert dict(sms.attributes or {}) == {"cancellations.provider": "sms", "error.type": "ConnectionError"}
    assert "+61400000000" not in str(sms.status.description)


def test_off_a_call_to_a_provider_opens_no_span() -> None:
    with tracing.external_call("smtp send", "smtp"):
        assert not tracing.enabled()


class RecordingConn:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[Any, ...]]]] = []

    async def execute(self, sql: str, *columns: list[Any]) -> None:
        self.calls.append((sql, list(zip(*columns, strict=True))))


async def test_the_outbox_row_carries_the_emitting_span_context_beside_the_body() -> None:
    traced = outbox.outgoing(
        topics.SCORING_EVENTS,
        _hold_lifted(),
        subject="pro-1",
        source="service/scoring",
        correlation_id=None,
        traceparent=TRACEPARENT,
        tracestate="a=1",
    )
    untraced = outbox.outgoing(topics.SCORING_EVENTS, _hold_lifted(), subject="pro-2", source="s", correlation_id=None)
    # A tracestate means nothing without its traceparent: it is not kept alone.
    alone = outbox.outgoing(
        topics.SCORING_EVENTS, _hold_lifted(), subject="p", source="s", correlation_id=None, tracestate="a=1"
    )
    conn = RecordingConn()
    await outbox.write(conn, [traced, untraced, alone])  # type: ignore[arg-type]
    [(sql, rows)] = conn.calls
    assert "traceparent, tracestate" in sql
    assert [row[5:] for row in rows] == [(TRACEPARENT, "a=1"), (None, None), (None, None)]
    assert all("traceparent" not in row[4] for row in rows)  # the body never holds it

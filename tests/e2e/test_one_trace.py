"""One trace across all six services for one staff late cancellation, as the services export it
over OTLP/HTTP to a local collector (tests/e2e/otlp.py): the request comes in with a W3C
traceparent, and every consume, handle, database and publish span it causes, in booking,
cancellation-policy, scoring, billing, notification and pms-sync, belongs to that trace, each
hop's consume span the child of the publish span that sent its record."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from datetime import UTC, datetime, timedelta

import pytest

from shared.testing import EventWatcher, envelope, iso, unique, wait_for_row
from shared.topics import (
    BILLING_EVENTS,
    BOOKING_EVENTS,
    POLICY_DECISIONS,
    POLICY_REQUESTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
)

from .otlp import CollectedSpan, Collector
from .stories import ann_booked, harbour_dental

pytestmark = pytest.mark.e2e

SIX = {"booking", "cancellation-policy", "scoring", "billing", "notification", "pms-sync"}
PRODUCER, CONSUMER = 4, 5  # opentelemetry.proto.trace.v1.Span.SpanKind


async def _spans_until(collector: Collector, trace_id: str, done, timeout: float = 30.0) -> list[CollectedSpan]:
    deadline = time.monotonic() + timeout
    while True:
        spans = collector.in_trace(trace_id)
        if done(spans) or time.monotonic() > deadline:
            return spans
        await asyncio.sleep(0.2)


def _one(spans: list[CollectedSpan], **where) -> CollectedSpan:
    found = [s for s in spans if all(_field(s, k) == v for k, v in where.items())]
    assert len(found) == 1, (where, [(s.service, s.name) for s in spans])
    return found[0]


def _field(span: CollectedSpan, name: str):
    return getattr(span, name) if hasattr(span, name) else span.attributes.get(name.replace("__", "."))


async def test_one_staff_late_cancellation_is_one_trace_across_all_six_services(system, infra, publisher, collector):
    practice_id, booking_id, patient_id = unique("practice"), unique("booking"), unique("patient")
    email = f"{patient_id}@patients.test"
    starts = datetime.now(UTC) + timedelta(hours=6)
    trace_id, upstream_span = secrets.token_hex(16), secrets.token_hex(8)

    async with EventWatcher(infra.bootstrap, [POLICY_REQUESTS, POLICY_DECISIONS, BOOKING_EVENTS, BILLING_EVENTS]) as w:
        await publisher.event(
            UPSTREAM_PRACTICES,
            "practice.configured",
            practice_id,
            harbour_dental(practice_id),
        )
        await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.scheduled",
            booking_id,
            ann_booked(booking_id, practice_id, patient_id, starts, patient={"email": email}),
        )
        await wait_for_row(
            infra.admin_dsn,
            "SELECT true FROM cancellation_policy.practice_settings WHERE practice_id = $1",
            practice_id,
        )
        await wait_for_row(
            infra.admin_dsn, "SELECT true FROM pms_sync.integrations WHERE practice_id = $1", practice_id
        )
        await wait_for_row(infra.admin_dsn, "SELECT true FROM booking.bookings WHERE booking_id = $1", booking_id)

        # The staff tool's request, sent in a trace of its own (the CloudEvents tracing extension).
        request = envelope(
            "booking.cancellation_requested",
            booking_id,
            {
                "request_id": unique("request"),
                "booking_id": booking_id,
                "requested_at": iso(datetime.now(UTC)),
                "actor": {"kind": "staff", "id": "staff-7", "roles": ["reception"]},
                "channel": "practice",
                "reason_code": "illness",
                "reason_text": "Dr Lee is unwell today",
            },
        )
        request["traceparent"] = f"00-{trace_id}-{upstream_span}-01"
        await publisher.raw(UPSTREAM_BOOKINGS, booking_id, json.dumps(request).encode())

        def about(type_: str):
            return lambda s: s.type == type_ and s.value.get("correlationid") == request["id"]

        asked = (await w.wait_for(about("cancellation.assessment_requested")))[0]
        assessed = (await w.wait_for(about("cancellation.assessed")))[0]
        cancelled = (await w.wait_for(about("booking.cancelled")))[0]
        charge = (await w.wait_for(about("charge.created")))[0]

    # Every record of the chain carries the trace in its envelope, as its publish span's context.
    for seen in (asked, assessed, cancelled, charge):
        assert seen.value["traceparent"].split("-")[1] == trace_id, seen.type

    hops = [  # (event, from, to)
        (asked, "booking", "cancellation-policy"),
        (assessed, "cancellation-policy", "booking"),
        *((cancelled, "booking", downstream) for downstream in ("scoring", "billing", "notification", "pms-sync")),
        (charge, "billing", "notification"),
    ]

    def complete(spans: list[CollectedSpan]) -> bool:
        seen = {(s.service, s.kind, s.attributes.get("messaging.message.id")) for s in spans}
        return all(
            (sender, PRODUCER, event.value["id"]) in seen and (receiver, CONSUMER, event.value["id"]) in seen
            for event, sender, receiver in hops
        )

    spans = await _spans_until(collector, trace_id, complete)

    # One trace, from all six services.
    assert {s.service for s in spans} >= SIX, sorted({s.service for s in spans})
    by_id = {s.span_id: s for s in spans}

    # It began at the staff tool's span: booking's consume span of the request is its child.
    first = _one(spans, service="booking", kind=CONSUMER, messaging__message__id=request["id"])
    assert first.parent_span_id == upstream_span
    assert first.attributes["messaging.destination.name"] == UPSTREAM_BOOKINGS
    assert first.attributes["messaging.system"] == "kafka"

    for event, sender, receiver in hops:
        event_id = event.value["id"]
        publish = _one(spans, service=sender, kind=PRODUCER, messaging__message__id=event_id)
        consume = _one(spans, service=receiver, kind=CONSUMER, messaging__message__id=event_id)
        hop = f"{event.type}: {sender} -> {receiver}"
        # Across the hop: the consume span is the child of the publish span that sent the record,
        # and the record carried exactly that span's context.
        assert consume.parent_span_id == publish.span_id, hop
        assert event.value["traceparent"] == f"00-{trace_id}-{publish.span_id}-01", hop
        assert publish.attributes["messaging.destination.name"] == event.topic, hop
        assert consume.attributes["messaging.kafka.offset"] == event.offset, hop
        # Within the sender: publish <- handle <- consume of what caused the event.
        handle = by_id[publish.parent_span_id]
        assert handle.service == sender and handle.name.startswith("handle "), hop
        cause = by_id[handle.parent_span_id]
        assert cause.service == sender and cause.kind == CONSUMER, hop
        # The receiver's transaction has a database span: a child of this consume span, or
        # linked to it when another record led the batch.
        assert any(
            s.name == "postgresql transaction"
            and s.service == receiver
            and (s.parent_span_id == consume.span_id or (trace_id, consume.span_id) in s.links)
            for s in collector.spans
        ), hop

    # Nothing personal and no payload value in any span of the trace.
    text = json.dumps([[s.name, s.attributes] for s in spans])
    for secret in (email, patient_id, booking_id, "Ann", "Dr Lee is unwell today", "45.00", "staff-7"):
        assert secret not in text, secret

    # The patient's email leaves from notification's sender (a background job, in a trace of its
    # own): its SMTP call is a CLIENT span of notification's, and names nothing it sends.
    deadline = time.monotonic() + 30
    while not [s for s in collector.spans if s.service == "notification" and s.name == "smtp send"]:
        assert time.monotonic() < deadline, "no smtp send span from notification"
        await asyncio.sleep(0.2)
    for smtp in [s for s in collector.spans if s.name == "smtp send"]:
        assert smtp.service == "notification" and smtp.kind == 3  # CLIENT
        assert smtp.attributes["cancellations.provider"] == "smtp"
        assert set(smtp.attributes) <= {"cancellations.provider", "error.type"}

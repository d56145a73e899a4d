"""Distributed tracing: OpenTelemetry spans exported over OTLP/HTTP, when a collector is named.

Guarantees (docs/design.md#tracing):
- Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and
  off with `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Off, no SDK object exists and
  every hook is one `is None` test: no span, no attribute built. A trace context that came in on
  a record is still handed on, unchanged, to the events emitted for it, so a service without
  tracing does not cut a trace that passes through it.
- On, each consumed record has a consume span (kind CONSUMER) whose parent is the record's
  `traceparent`; its handler runs in a handle span under it, and the events it emits carry the
  handle span's context through the outbox (`outbox.traceparent`) to the relay, whose publish
  span (kind PRODUCER) is that context's child and whose context the published record carries.
  A batch's Postgres transaction is a database span (kind CLIENT), linked to every record's
  consume span. Calls to providers (SMTP, SMS, Stripe, a PMS) have their own CLIENT spans
  (`external_call`).
- Tracing never loses, refuses or delays a message: a malformed trace context is dropped when the
  envelope is parsed (shared.contracts.envelope), spans are exported in the background by the
  SDK's batch processor, which drops spans rather than block when its queue is full or the
  collector is away.
- A span holds no payload value and no personal data: topics, partitions, offsets, envelope ids
  and types, handler and service names, counts, error types (never an error's text).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from .logging import get_logger

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from .consumer import Record, UnitOfWork
    from .contracts.envelope import ContractViolation, Event

log = get_logger(__name__)

T = TypeVar("T")

# Set by `configure` (or `enable` in tests); None means tracing is off.
_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None

SUPPORTED_PROTOCOL = "http/protobuf"


def configure(service: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Turn tracing on for this process when the OTEL_* settings name a collector; returns
    whether it is on. `OTEL_SERVICE_NAME` defaults to the service's name; the sampler
    (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`), the exporter's headers and timeout and the
    batch processor's limits (`OTEL_BSP_*`) are the SDK's own standard settings."""
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    disabled = environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if not endpoint or disabled or environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or SUPPORTED_PROTOCOL
    )
    if protocol.strip().lower() != SUPPORTED_PROTOCOL:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol[:40]!r} is not supported: traces are exported as {SUPPORTED_PROTOCOL}"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = new_provider(service, OTLPSpanExporter(), environ)
    trace.set_tracer_provider(provider)
    enable(provider)
    log.info("tracing on", protocol=SUPPORTED_PROTOCOL)
    return True


def new_provider(service: str, exporter: SpanExporter, environ: Mapping[str, str] = os.environ) -> TracerProvider:
    """A tracer provider for `service` exporting through `exporter` in the background."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; what is passed here wins,
    # so the service's own name is passed only where OTEL_SERVICE_NAME does not say another.
    attributes = {"service.namespace": "cancellations"}
    if not environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service
    provider = TracerProvider(resource=Resource.create(attributes))  # the sampler: OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def enable(provider: TracerProvider | None) -> None:
    """Trace through `provider` from now on (None: off again). `configure` calls it; tests hand
    in a provider with an in-memory exporter."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer("cancellations.shared") if provider is not None else None


def enabled() -> bool:
    return _tracer is not None


def shutdown() -> None:
    """Export what is still buffered, then stop (at the process's end)."""
    if _provider is not None:
        _provider.shutdown()
    enable(None)


# --- trace context as text: what the envelope and the outbox carry -----------------------------


def traceparent_of(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def tracestate_of(context: SpanContext) -> str | None:
    if not context.trace_state:
        return None
    return context.trace_state.to_header() or None


def remote_context(traceparent: str | None, tracestate: str | None = None) -> SpanContext | None:
    """The span context a (validated, shared.contracts.envelope) `traceparent` names."""
    if not traceparent:
        return None
    try:
        _, trace_id, span_id, flags = traceparent.split("-")
        state = TraceState.from_header([tracestate]) if tracestate else None
        return SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16)), state)
    except ValueError:
        return None


def _parent(traceparent: str | None, tracestate: str | None = None) -> Context:
    """The context to start a span in: the remote span's, or an empty one (a new trace)."""
    remote = remote_context(traceparent, tracestate)
    return trace.set_span_in_context(NonRecordingSpan(remote)) if remote is not None else Context()


def _failed(span: Span, exc: BaseException) -> None:
    # The type only: an error's text may quote personal data.
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


# --- consume, handle, database: the recipe's hooks (shared.consumer) -----------------------------


class ConsumeSpans:
    """The consume spans of one batch, one per record, open from parsing to the commit."""

    def __init__(self, tracer: trace.Tracer, service: str, parsed: Sequence[tuple[Record, Event | ContractViolation]]):
        from .contracts.envelope import Event

        self.spans: dict[tuple[str, int, int], Span] = {}
        for record, result in parsed:
            event = result if isinstance(result, Event) else None
            attributes: dict[str, Any] = {
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.operation.name": "consume",
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
                "messaging.consumer.group.name": service,
            }
            if event is not None:
                attributes["messaging.message.id"] = event.id
                attributes["cloudevents.event_id"] = event.id
                attributes["cloudevents.event_type"] = event.type
            span = tracer.start_span(
                f"consume {record.topic}",
                context=_parent(event.traceparent, event.tracestate) if event is not None else Context(),
                kind=SpanKind.CONSUMER,
                attributes=attributes,
            )
            if event is None:
                span.set_attribute("error.type", "contract_violation")
                span.set_status(Status(StatusCode.ERROR, "contract violation: dead-lettered"))
            self.spans[(record.topic, record.partition, record.offset)] = span

    def of(self, record: Record) -> Span | None:
        return self.spans.get((record.topic, record.partition, record.offset))

    def end(self) -> None:
        for span in self.spans.values():
            span.end()


_batch: ContextVar[ConsumeSpans | None] = ContextVar("cancellations_consume_spans", default=None)


def consume(service: str, parsed: Sequence[tuple[Record, Event | ContractViolation]]) -> ConsumeSpans | None:
    """Open the consume spans of a batch just parsed (None when tracing is off)."""
    if _tracer is None:
        return None
    spans = ConsumeSpans(_tracer, service, parsed)
    _batch.set(spans)
    return spans


def consumed(spans: ConsumeSpans | None) -> None:
    """The batch committed: end its consume spans."""
    if spans is not None:
        spans.end()
        _batch.set(None)


def record_context(record: Record, event: Event) -> tuple[str | None, str | None]:
    """The trace context a record's unit starts from: its consume span's, or (tracing off) the
    context the record came with, handed on unchanged."""
    spans = _batch.get() if _tracer is not None else None
    span = spans.of(record) if spans is not None else None
    if span is None:
        return event.traceparent, event.tracestate
    context = span.get_span_context()
    return traceparent_of(context), tracestate_of(context)


async def transaction(spans: ConsumeSpans | None, work: Awaitable[T]) -> T:
    """Await a batch's transaction (acquire, statements, commit) inside a database span linked
    to the consume span of every record; its parent is the first record's."""
    if spans is None or _tracer is None:
        return await work
    contexts = [span.get_span_context() for span in spans.spans.values()]
    with _tracer.start_as_current_span(
        "postgresql transaction",
        context=trace.set_span_in_context(next(iter(spans.spans.values()))) if contexts else None,
        kind=SpanKind.CLIENT,
        links=[Link(context) for context in contexts[1:]],
        attributes={
            "db.system.name": "postgresql",
            "db.operation.name": "transaction",
            "messaging.batch.message_count": len(contexts),
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            return await work
        except BaseException as exc:
            _failed(span, exc)
            raise


# What a hook gives when tracing is off: one shared, reusable context manager that does nothing.
_OFF: AbstractContextManager[None] = nullcontext()


def handling(units: Sequence[UnitOfWork[Any]], handler: Any, event_type: str) -> AbstractContextManager[None]:
    """A handle span per unit, child of its record's consume span; while it runs, what the unit
    emits carries the handle span's context. A set-based handler's units share its interval."""
    if _tracer is None or not units:
        return _OFF
    return _handling(_tracer, units, handler, event_type)


@contextmanager
def _handling(tracer: trace.Tracer, units: Sequence[UnitOfWork[Any]], handler: Any, event_type: str) -> Iterator[None]:
    name = getattr(handler, "__name__", "handler")
    spans: list[Span] = []
    for unit in units:
        span = tracer.start_span(
            f"handle {event_type}",
            context=_parent(unit.traceparent, unit.tracestate),
            attributes={
                "cancellations.handler": name,
                "cloudevents.event_type": event_type,
                "messaging.batch.message_count": len(units),
            },
        )
        context = span.get_span_context()
        unit.traceparent, unit.tracestate = traceparent_of(context), tracestate_of(context)
        spans.append(span)
    try:
        # The first unit's span is current, for spans the handler opens (a set shares one interval).
        with trace.use_span(spans[0], end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield
    except BaseException as exc:
        for span in spans:
            _failed(span, exc)
        raise
    finally:
        for span in spans:
            span.end()


# --- publish: the relay's send (shared.outbox) -------------------------------------------------


def publish(service: str, row: Any) -> tuple[Span | None, str | None, str | None]:
    """A publish span for an outbox row (an asyncpg record), child of the context stored with it, and the trace
    context the published record carries: the publish span's (tracing off: the row's own)."""
    traceparent, tracestate = row["traceparent"], row["tracestate"]
    if _tracer is None:
        return None, traceparent, tracestate
    span = _tracer.start_span(
        f"publish {row['topic']}",
        context=_parent(traceparent, tracestate),
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": row["topic"],
            "messaging.message.id": str(row["id"]),
            "cloudevents.event_id": str(row["id"]),
            "cloudevents.event_type": row["type"],
            "messaging.client.id": f"{service}-relay",
        },
    )
    context = span.get_span_context()
    return span, traceparent_of(context), tracestate_of(context)


def published(span: Span | None, outcome: Any) -> None:
    """The broker answered (record metadata) or refused (an exception): end the publish span."""
    if span is None:
        return
    if isinstance(outcome, BaseException):
        _failed(span, outcome)
    else:
        partition, offset = getattr(outcome, "partition", None), getattr(outcome, "offset", None)
        if partition is not None:
            span.set_attribute("messaging.destination.partition.id", str(partition))
        if offset is not None:
            span.set_attribute("messaging.kafka.offset", offset)
    span.end()


# --- calls to providers ------------------------------------------------------------------------


def external_call(name: str, system: str, **attributes: str | int) -> AbstractContextManager[None]:
    """A CLIENT span around one call to a provider (`smtp send`, `sms send`, `stripe charge`),
    in the current trace. Attributes name the provider and the operation, never what is sent."""
    if _tracer is None:
        return _OFF
    return _external_call(_tracer, name, system, attributes)


@contextmanager
def _external_call(tracer: trace.Tracer, name: str, system: str, attributes: dict[str, str | int]) -> Iterator[None]:
    with tracer.start_as_current_span(
        name,
        kind=SpanKind.CLIENT,
        attributes={"cancellations.provider": system, **attributes},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except BaseException as exc:
            _failed(span, exc)
            raise

"""The CloudEvents 1.0 envelope every message on every topic travels in.

`parse_envelope` turns raw Kafka bytes into an envelope with a validated payload, or raises
`ContractViolation` with a sentence saying what is wrong; the caller dead-letters it.
`parse_record` reads a record in either mode of the CloudEvents Kafka protocol binding:
structured (the value is the whole envelope, what we publish) or binary (the attributes in
`ce_<name>` headers, `content-type` for `datacontenttype`, the value the `data` alone), and
gives the same `Event` for the same event either way.

Guarantee: whatever the bytes, `parse_envelope` returns an `Event` or raises
`ContractViolation` — never anything else (an overflowing date, JSON nested thousands deep or
a number with thousands of digits included), and it never spends more than a bounded effort:
a message over `MAX_MESSAGE_BYTES` is refused before it is decoded, and one nested deeper than
`MAX_NESTING_DEPTH` before it is validated. Its sentences never quote the input's values.
`parse_record` keeps the same promise for the headers: at most `MAX_HEADERS` of them, names of
at most `MAX_HEADER_NAME_CHARS`, each value it reads at most `MAX_HEADER_VALUE_BYTES` of strict,
printable UTF-8, every attribute once; its sentences name only attributes of the contract.
The trace context (`traceparent`, `tracestate`, in either mode) is the one exception to refusal:
a malformed one is dropped and the message goes on, since tracing must never lose a message.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)

from ..redaction import describe_validation_error
from .base import Payload

# Our largest healthy message is a few kilobytes; a quarter of a megabyte leaves ample room for
# every field's own bounds and keeps the dead letter of a refused message far below the broker's limit.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_NESTING_DEPTH = 16  # objects and arrays inside one another, the envelope counting as one
ENVELOPE_TEXT_MAX_CHARS = 256
EARLIEST_TIME_YEAR, LATEST_TIME_YEAR = 2000, 2100


def _sane_year(value: datetime) -> datetime:
    # Checked on the fields as written: converting a time at the edge of the calendar to UTC
    # (year 9999 with a negative offset) overflows.
    if not EARLIEST_TIME_YEAR <= value.year <= LATEST_TIME_YEAR:
        raise ValueError(f"a time must lie between the years {EARLIEST_TIME_YEAR} and {LATEST_TIME_YEAR}")
    return value


# Printable text: a control character in an id or a type is never meant, and would reach logs and keys.
EnvelopeText = Annotated[str, Field(min_length=1, max_length=ENVELOPE_TEXT_MAX_CHARS, pattern=r"^[^\x00-\x1f\x7f]+$")]


# --- trace context: the CloudEvents distributed-tracing extension (W3C Trace Context) ----------
# `traceparent` and `tracestate` are optional attributes like `correlationid`, bounded and checked
# like every other one, with one difference: one that is malformed is dropped, never refused.
# Tracing must never lose a message, so a bad trace header costs the trace, not the message.

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[ -~]*)?")
_NO_TRACE_ID, _NO_SPAN_ID = "0" * 32, "0" * 16
TRACESTATE_MAX_CHARS = 512  # W3C: 32 list members; vendors may cut beyond 512 characters
TRACESTATE_MAX_MEMBERS = 32
_TRACESTATE_MEMBER = re.compile(
    r"[a-z0-9][a-z0-9_\-*/]{0,240}(@[a-z][a-z0-9_\-*/]{0,13})?=[ -+\--<>-~]{0,255}[!-+\--<>-~]"
)


def valid_traceparent(value: object) -> str | None:
    """A W3C `traceparent` in version 00's form, or None when `value` is not one.

    A later version is read for its first four fields, as W3C Trace Context asks; version ff,
    an all-zero trace or parent id, and version 00 with anything after its flags are not one."""
    if not isinstance(value, str) or len(value) > ENVELOPE_TEXT_MAX_CHARS:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _NO_TRACE_ID or parent_id == _NO_SPAN_ID:
        return None
    return f"00-{trace_id}-{parent_id}-{flags}"


def valid_tracestate(value: object) -> str | None:
    """A W3C `tracestate` list (at most 32 members, 512 characters), or None when `value` is not one."""
    if not isinstance(value, str) or len(value) > TRACESTATE_MAX_CHARS:
        return None
    members = [member.strip(" \t") for member in value.split(",")]
    members = [member for member in members if member]
    if not members or len(members) > TRACESTATE_MAX_MEMBERS:
        return None
    if not all(_TRACESTATE_MEMBER.fullmatch(member) for member in members):
        return None
    return ",".join(members)


class ContractViolation(Exception):
    """The message can never be processed as it is: it goes to the dead-letter topic.

    `envelope` is set when the envelope itself was valid and only its payload was not, so a
    service can still answer the requester (e.g. a rejection naming the request id).
    """

    def __init__(self, message: str, envelope: Envelope | None = None) -> None:
        super().__init__(message)
        self.envelope = envelope


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    specversion: Literal["1.0"]
    id: EnvelopeText
    type: EnvelopeText
    source: EnvelopeText
    subject: EnvelopeText
    time: Annotated[AwareDatetime, AfterValidator(_sane_year)]
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any]
    correlationid: EnvelopeText | None = None
    # The CloudEvents distributed-tracing extension: dropped when malformed (see above). The
    # schema shows producers the form to send; a consumer reads anything and drops what is not it.
    traceparent: Annotated[
        str | None,
        BeforeValidator(valid_traceparent),
        WithJsonSchema({"type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$"}),
    ] = Field(
        default=None,
        description="W3C Trace Context traceparent of the span that produced this event; ignored when malformed",
    )
    tracestate: Annotated[
        str | None,
        BeforeValidator(valid_tracestate),
        WithJsonSchema({"type": "string", "maxLength": TRACESTATE_MAX_CHARS}),
    ] = Field(
        default=None,
        description="W3C Trace Context tracestate, read only beside a valid traceparent; ignored when malformed",
    )


class Event(BaseModel):
    """An envelope whose `data` has been validated against its event type's model."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    envelope: Envelope
    payload: Payload

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def type(self) -> str:
        return self.envelope.type

    @property
    def correlation_id(self) -> str:
        return self.envelope.correlationid or self.envelope.id

    @property
    def traceparent(self) -> str | None:
        return self.envelope.traceparent

    @property
    def tracestate(self) -> str | None:
        return self.envelope.tracestate if self.envelope.traceparent else None


def _check_shape(document: Any) -> None:
    """Nesting depth and NUL characters, walked level by level without recursion (the walk
    cannot overflow). It runs for every record, so it builds no tuple or generator per value."""
    level: list[Any] = [document]
    depth = 1
    while level:
        below: list[Any] = []
        for value in level:
            if isinstance(value, str):
                if "\x00" in value:
                    raise ContractViolation(_NUL_TEXT)
            elif isinstance(value, dict):
                if depth > MAX_NESTING_DEPTH:
                    raise ContractViolation(f"JSON nested deeper than {MAX_NESTING_DEPTH} levels")
                for key in value:
                    if isinstance(key, str) and "\x00" in key:
                        raise ContractViolation(_NUL_TEXT)
                below.extend(value.values())
            elif isinstance(value, list):
                if depth > MAX_NESTING_DEPTH:
                    raise ContractViolation(f"JSON nested deeper than {MAX_NESTING_DEPTH} levels")
                below.extend(value)
        level = below
        depth += 1


# Postgres text and jsonb cannot hold U+0000: such a message could never be stored.
_NUL_TEXT = "text contains a NUL (\\u0000) character, which no text field may hold"


# orjson reads (and writes) JSON several times faster than the standard library. It refuses
# everything the standard library refuses and more (lone surrogates, NaN, numbers beyond a double,
# nesting past 1024): whatever it refuses is read again by the standard library, which decides
# and says why in its own words, so the outcome of every message is the same either way.
_fast_json = True


def use_fast_json(on: bool) -> None:
    """FAST_JSON: orjson on the hot path (the default), or the standard library alone."""
    global _fast_json
    _fast_json = on


def fast_json() -> bool:
    return _fast_json


def _decode(raw: bytes) -> Any:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ContractViolation(f"message of {len(raw)} bytes: at most {MAX_MESSAGE_BYTES} bytes are accepted")
    if _fast_json:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the standard library decides, below
    try:
        return json.loads(raw.decode("utf-8"))  # strictly UTF-8: never guessed from a byte-order mark
    except UnicodeDecodeError:
        raise ContractViolation("not JSON: the bytes are not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ContractViolation(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ContractViolation(f"JSON nested deeper than {MAX_NESTING_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ContractViolation(f"not JSON this system can read: {str(exc)[:200]}") from None


def _validate(model: type[BaseModel], data: Any, what: str, envelope: Envelope | None = None) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ContractViolation(f"{what}: {describe_validation_error(exc, max_errors=3)}", envelope) from None
    except Exception as exc:  # noqa: BLE001 - any failure to read a value is the message's fault
        raise ContractViolation(f"{what}: a value cannot be read ({type(exc).__name__})", envelope) from None


def parse_envelope(raw: bytes | None, registry: dict[str, type[Payload]]) -> Event:
    """Validate raw bytes as an envelope and its payload as the model its `type` names."""
    if raw is None:
        raise ContractViolation("empty message (tombstone): a message must be a CloudEvents JSON object")
    document = _decode(raw)
    if not isinstance(document, dict):
        raise ContractViolation("not a JSON object: a message must be one CloudEvents JSON object")
    return _event(document, registry)


# --- binary mode: the Kafka protocol binding of CloudEvents 1.0 --------------------------------

# Our own records carry one header; tracing adds one or two. 64 leaves room for any producer's
# and keeps what a hostile record can make us look at small.
MAX_HEADERS = 64
MAX_HEADER_NAME_CHARS = 64
MAX_HEADER_VALUE_BYTES = 4 * ENVELOPE_TEXT_MAX_CHARS  # the longest attribute, four bytes a character
CE_PREFIX = "ce_"
# CloudEvents attribute names: lower-case ASCII letters and digits, at most 20 of them.
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]{1,20}")
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]*")
# Not attributes in binary mode: the data is the value, its content type the `content-type` header.
_NOT_HEADERS = frozenset({"data", "data_base64", "datacontenttype"})
_KNOWN_ATTRIBUTES = frozenset(Envelope.model_fields) - {"data"}
# Trace context: a header that cannot be read (or comes twice) is dropped, never a dead letter.
_TRACE_ATTRIBUTES = frozenset({"traceparent", "tracestate"})

Headers = Sequence[tuple[str, bytes | None]]


def parse_record(value: bytes | None, headers: Headers | None, registry: dict[str, type[Payload]]) -> Event:
    """A record in structured or binary mode, as the CloudEvents Kafka binding tells them apart:
    a `content-type` of `application/cloudevents...` is structured, and so is a record with no
    `ce_` header (what every producer sent before binary mode was accepted); a record with
    `ce_` headers and any other content type is binary."""
    headers = headers or ()
    if len(headers) > MAX_HEADERS:
        raise ContractViolation(f"a record with {len(headers)} headers: at most {MAX_HEADERS} are accepted")
    content_type: str | None = None
    attributes: list[tuple[str, bytes | None]] = []
    for name, raw in headers:
        if not isinstance(name, str) or len(name) > MAX_HEADER_NAME_CHARS:
            raise ContractViolation(f"a header name over {MAX_HEADER_NAME_CHARS} characters")
        if name.lower() == "content-type":
            if content_type is not None:
                raise ContractViolation("the content-type header appears more than once")
            content_type = _header_text(raw, "the content-type header")
        elif name.startswith(CE_PREFIX):
            attributes.append((name.removeprefix(CE_PREFIX), raw))
    media_type = content_type.split(";", 1)[0].strip().lower() if content_type is not None else None
    if not attributes or (media_type is not None and media_type.startswith("application/cloudevents")):
        return parse_envelope(value, registry)
    return _event(_binary_document(value, media_type, attributes), registry)


def _binary_document(
    value: bytes | None, media_type: str | None, attributes: list[tuple[str, bytes | None]]
) -> dict[str, Any]:
    """The structured form of a binary-mode record, for the one validation both modes share."""
    document: dict[str, Any] = {}
    unreadable_trace: set[str] = set()
    for name, raw in attributes:
        if name in _TRACE_ATTRIBUTES:
            try:
                text = _header_text(raw, name)
            except ContractViolation:
                text = None
            if text is None or name in document or name in unreadable_trace:
                document.pop(name, None)
                unreadable_trace.add(name)
            else:
                document[name] = text
            continue
        if not _ATTRIBUTE_NAME.fullmatch(name):
            raise ContractViolation("a ce_ header whose attribute name is not 1 to 20 lower-case letters or digits")
        # Only an attribute of the contract is named: any other name came from the sender.
        what = f"the ce_{name} header" if name in _KNOWN_ATTRIBUTES or name in _NOT_HEADERS else "an extension header"
        if name in _NOT_HEADERS:
            raise ContractViolation(
                f"{what} is not an attribute in binary mode: the data is the record value, its type the content-type header"
            )
        if name in document:
            raise ContractViolation(f"{what} appears more than once")
        document[name] = _header_text(raw, what)
    if media_type is not None:
        if media_type != "application/json":
            raise ContractViolation("binary mode: the content-type header must be application/json")
        document["datacontenttype"] = media_type
    if value is None:
        raise ContractViolation("empty record value: in binary mode the value is the event's data, a JSON object")
    data = _decode(value)
    if not isinstance(data, dict):
        raise ContractViolation("binary mode: the record value must be one JSON object, the event's data")
    document["data"] = data
    return document


def _header_text(raw: bytes | None, what: str) -> str:
    if raw is None:
        raise ContractViolation(f"{what} has no value")
    if len(raw) > MAX_HEADER_VALUE_BYTES:
        raise ContractViolation(f"{what} of {len(raw)} bytes: at most {MAX_HEADER_VALUE_BYTES} bytes are accepted")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ContractViolation(f"{what} is not UTF-8") from None
    if not _PRINTABLE.fullmatch(text):
        raise ContractViolation(f"{what} holds a control character")
    return text


def _event(document: dict[str, Any], registry: dict[str, type[Payload]]) -> Event:
    """The one validation of both modes: shape, envelope, then the payload its `type` names."""
    # A trace context that is not one is dropped before any check could refuse the message for it.
    if "traceparent" in document and valid_traceparent(document["traceparent"]) is None:
        del document["traceparent"]
    if "tracestate" in document and valid_tracestate(document["tracestate"]) is None:
        del document["tracestate"]
    _check_shape(document)
    envelope: Envelope = _validate(Envelope, document, "invalid CloudEvents envelope")
    model = registry.get(envelope.type)
    if model is None:
        raise ContractViolation(f"unknown event type {envelope.type[:100]!r} for this topic")
    payload = _validate(model, envelope.data, f"{envelope.type} payload breaks the contract", envelope)
    return Event(envelope=envelope, payload=payload)


def new_envelope(
    payload: Payload,
    *,
    source: str,
    subject: str,
    correlation_id: str | None,
    time: datetime | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """The wire form of a new event (a dict, ready for JSON)."""
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "type": payload.event_type,
        "source": source,
        "subject": subject,
        "time": (time or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": payload.to_json_dict(),
    }
    if correlation_id:
        envelope["correlationid"] = correlation_id
    return envelope

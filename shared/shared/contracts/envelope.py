"""The CloudEvents 1.0 envelope (structured mode) every message on every topic travels in.

`parse_envelope` turns raw Kafka bytes into an envelope with a validated payload, or raises
`ContractViolation` with a sentence saying what is wrong; the caller dead-letters it.

Guarantee: whatever the bytes, `parse_envelope` returns an `Event` or raises
`ContractViolation` — never anything else (an overflowing date, JSON nested thousands deep or
a number with thousands of digits included), and it never spends more than a bounded effort:
a message over `MAX_MESSAGE_BYTES` is refused before it is decoded, and one nested deeper than
`MAX_NESTING_DEPTH` before it is validated. Its sentences never quote the input's values.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

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


def _check_shape(document: Any) -> None:
    """Nesting depth and NUL characters, walked without recursion (the walk cannot overflow)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                # Postgres text and jsonb cannot hold U+0000: such a message could never be stored.
                raise ContractViolation("text contains a NUL (\\u0000) character, which no text field may hold")
            continue
        if isinstance(value, dict):
            children: list[Any] = [*value.keys(), *value.values()]
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_NESTING_DEPTH:
            raise ContractViolation(f"JSON nested deeper than {MAX_NESTING_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def _decode(raw: bytes) -> Any:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ContractViolation(f"message of {len(raw)} bytes: at most {MAX_MESSAGE_BYTES} bytes are accepted")
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

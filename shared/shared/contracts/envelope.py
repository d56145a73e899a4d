"""The CloudEvents 1.0 envelope (structured mode) every message on every topic travels in.

`parse_envelope` turns raw Kafka bytes into an envelope with a validated payload, or raises
`ContractViolation` with a sentence saying what is wrong; the caller dead-letters it.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from .base import Payload


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
    id: str = Field(min_length=1)
    type: str = Field(min_length=1)
    source: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    time: AwareDatetime
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any]
    correlationid: str | None = None


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


def _first_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _has_nul(value: Any) -> bool:
    """Postgres text and jsonb cannot hold U+0000: such a message could never be stored."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def parse_envelope(raw: bytes | None, registry: dict[str, type[Payload]]) -> Event:
    """Validate raw bytes as an envelope and its payload as the model its `type` names."""
    if raw is None:
        raise ContractViolation("empty message (tombstone): a message must be a CloudEvents JSON object")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractViolation(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ContractViolation("not a JSON object: a message must be one CloudEvents JSON object")
    if _has_nul(document):
        raise ContractViolation("text contains a NUL (\\u0000) character, which no text field may hold")
    try:
        envelope = Envelope.model_validate(document)
    except ValidationError as exc:
        raise ContractViolation(f"invalid CloudEvents envelope: {_first_error(exc)}") from None
    model = registry.get(envelope.type)
    if model is None:
        raise ContractViolation(f"unknown event type {envelope.type!r} for this topic")
    try:
        payload = model.model_validate(envelope.data)
    except ValidationError as exc:
        raise ContractViolation(
            f"{envelope.type} payload breaks the contract: {_first_error(exc)}", envelope
        ) from None
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

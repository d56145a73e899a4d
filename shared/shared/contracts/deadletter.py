"""The dead-letter record (`message.dead_lettered` on `dlq.<service>.v1`); not in CONTRACT.md.

Guarantees: the original bytes survive exactly (`original_value_base64`, absent only for a
tombstone), together with where they came from (topic, partition, offset, key) and why they
could not be processed, so ops can inspect, fix and replay the message.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import ClassVar, Self

from pydantic import Field

from .base import Payload
from .common import Id, UtcDatetime


class MessageDeadLettered(Payload):
    event_type: ClassVar[str] = "message.dead_lettered"

    service: Id
    original_topic: Id
    original_partition: int = Field(ge=0)
    original_offset: int = Field(ge=0)
    original_key: str | None = None
    original_value_base64: str | None = None  # None only for a tombstone (no value at all)
    original_value_text: str | None = None  # the value as UTF-8, when it is valid UTF-8
    error: str
    dead_lettered_at: UtcDatetime

    @classmethod
    def of(
        cls,
        *,
        service: str,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        error: str,
        at: datetime,
    ) -> Self:
        """The record for one Kafka message that could not be processed."""
        return cls.new(
            service=service,
            original_topic=topic,
            original_partition=partition,
            original_offset=offset,
            original_key=None if key is None else _storable(key.decode("utf-8", errors="replace")),
            original_value_base64=None if value is None else base64.b64encode(value).decode("ascii"),
            original_value_text=_utf8_or_none(value),
            error=_storable(error),
            dead_lettered_at=at,
        )

    def original_value(self) -> bytes | None:
        return None if self.original_value_base64 is None else base64.b64decode(self.original_value_base64)


def _utf8_or_none(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # Postgres text and jsonb cannot hold U+0000 and the dead letter goes through the outbox:
    # such a value is kept in base64 only, or the dead letter itself could never be written.
    return None if "\x00" in text else text


def _storable(text: str) -> str:
    return text.replace("\x00", "\ufffd")

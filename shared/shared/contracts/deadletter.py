"""The dead-letter record (`message.dead_lettered` on `dlq.<service>.v1`); not in CONTRACT.md.

Guarantees:
- The original bytes are kept once, exactly: as `original_value_text` when they are UTF-8
  (readable, and UTF-8 round-trips byte for byte), otherwise as `original_value_base64`.
  Both are absent only for a tombstone. `original_value()` gives the bytes back for a replay.
- A dead letter always fits the broker's limit: an original longer than
  `ORIGINAL_VALUE_MAX_BYTES` is kept as a prefix, with `original_value_truncated`, and every
  dead letter names the whole original's length and sha256, so ops can still match it to
  the record in the source topic (which keeps it whole) by topic, partition and offset.
- Key and error are bounded too; text never holds a NUL, which Postgres cannot store.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from typing import ClassVar, Self

from pydantic import Field

from .base import Payload
from .common import ERROR_MAX_CHARS, Id, UtcDatetime

# Kafka's default limit for one record is about 1 MB; a dead letter is an envelope around the
# original, whose base64 form is 4/3 of its size: 512 KiB of original stays well under the limit.
ORIGINAL_VALUE_MAX_BYTES = 512 * 1024
ORIGINAL_KEY_MAX_CHARS = 1024


class MessageDeadLettered(Payload):
    event_type: ClassVar[str] = "message.dead_lettered"

    service: Id
    original_topic: Id
    original_partition: int = Field(ge=0)
    original_offset: int = Field(ge=0)
    original_key: str | None = None
    original_value_text: str | None = None  # the value (or its prefix) when it is UTF-8
    original_value_base64: str | None = None  # the value (or its prefix) when it is not
    original_value_length: int | None = Field(default=None, ge=0)  # of the whole original
    original_value_sha256: str | None = None  # of the whole original, hex
    original_value_truncated: bool = False
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
        kept = None if value is None else value[:ORIGINAL_VALUE_MAX_BYTES]
        text = _utf8_or_none(kept)
        if text is not None and len(json.dumps(text)) > 4 * len(kept or b"") // 3 + 4:
            text = None  # escaping would make it larger than base64 (control or non-ASCII characters)
        return cls.new(
            service=service,
            original_topic=topic,
            original_partition=partition,
            original_offset=offset,
            original_key=None
            if key is None
            else _storable(key.decode("utf-8", errors="replace"))[:ORIGINAL_KEY_MAX_CHARS],
            original_value_text=text,
            original_value_base64=None if kept is None or text is not None else base64.b64encode(kept).decode("ascii"),
            original_value_length=None if value is None else len(value),
            original_value_sha256=None if value is None else hashlib.sha256(value).hexdigest(),
            original_value_truncated=value is not None and len(value) > ORIGINAL_VALUE_MAX_BYTES,
            error=_storable(error)[:ERROR_MAX_CHARS],
            dead_lettered_at=at,
        )

    def original_value(self) -> bytes | None:
        """The original bytes (their prefix when `original_value_truncated`); None for a tombstone."""
        if self.original_value_text is not None:
            return self.original_value_text.encode("utf-8")
        if self.original_value_base64 is not None:
            return base64.b64decode(self.original_value_base64)
        return None


def _utf8_or_none(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # Postgres text and jsonb cannot hold U+0000 and the dead letter goes through the outbox:
    # such a value is kept in base64, or the dead letter itself could never be written.
    return None if "\x00" in text else text


def _storable(text: str) -> str:
    return text.replace("\x00", "\ufffd")

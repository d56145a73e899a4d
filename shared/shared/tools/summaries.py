"""One readable line per event, for `cancellations events tail` and the console: no personal data.

Guarantee: a summary names the event's type, its subject and only the fields on `SHOWN` (ids,
outcomes, codes, amounts, counts), whatever the payload holds; free text (reasons, messages,
chart notes, errors), names, addresses and phone numbers never appear. A record that is not a
valid envelope is summarised by its size alone.
"""

from __future__ import annotations

import json
from typing import Any

# Fields that say what happened without saying who a person is (ids are opaque references).
SHOWN = (
    "booking_id",
    "practice_id",
    "professional_id",
    "request_id",
    "charge_id",
    "sync_id",
    "offer_id",
    "excuse_id",
    "allowed",
    "classification",
    "status_label",
    "reason",
    "rejection_reason",
    "party",
    "code",
    "deposit_action",
    "charge_card",
    "fee",
    "kind",
    "status",
    "amount",
    "currency",
    "recipient",
    "channel",
    "template",
    "integration",
    "attempts",
    "action",
    "delta",
    "score",
    "cause",
    "score_delta",
    "hold_days",
    "policy_version",
    "decision",
    "standing",
    "service",
    "original_topic",
    "original_partition",
    "original_offset",
)
# Of the nested ones, only these parts.
NESTED_SHOWN = {
    "fee": ("amount", "currency", "code"),
    "decision": ("allowed", "classification", "fee", "rejection_reason", "policy_version"),
}


def _value(name: str, value: Any) -> str | None:
    if isinstance(value, dict):
        parts = NESTED_SHOWN.get(name)
        if parts is None:
            return None
        inner = [f"{k}={v}" for k in parts if (v := _value(k, value.get(k))) is not None]
        return "{" + " ".join(inner) + "}" if inner else None
    if value is None or isinstance(value, list):
        return None
    text = str(value)
    return text if len(text) <= 64 else text[:61] + "..."


def summarise(topic: str, value: bytes | None) -> str:
    """`<time> <topic> <type> <subject> k=v ...` for one record's value."""
    if value is None:
        return f"{topic} (tombstone)"
    try:
        document = json.loads(value)
        kind, subject, when, data = document["type"], document["subject"], document["time"], document["data"]
        if not all(isinstance(x, str) for x in (kind, subject, when)) or not isinstance(data, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return f"{topic} (not an event: {len(value)} bytes)"
    fields = [f"{name}={shown}" for name in SHOWN if (shown := _value(name, data.get(name))) is not None]
    if data.get("booking_id") == subject:
        fields = [f for f in fields if not f.startswith("booking_id=")]
    return " ".join([when[:19], topic, kind[:64], subject[:64], *fields])

"""Poison and fuzzed messages (hypothesis) that can never be processed: each must land in the
dead-letter topic of every service that consumes its topic, exactly once, and nothing else."""

from __future__ import annotations

import json
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.testing import envelope

_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20))


@st.composite
def _poison(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["not_utf8", "not_json", "not_object", "no_envelope", "unknown_type", "bad_payload"]))
    tag = uuid.uuid4().hex  # every poison message is distinct, so each dead letter is attributable
    if kind == "not_utf8":
        return b"\xff\xfe" + tag.encode() + draw(st.binary(max_size=40))
    if kind == "not_json":
        return b"{" + tag.encode() + draw(st.text(max_size=40)).encode()
    if kind == "not_object":
        return json.dumps([tag, draw(_json_scalars)]).encode()
    if kind == "no_envelope":
        return json.dumps(
            {"id": tag, "data": draw(st.dictionaries(st.text(max_size=8), _json_scalars, max_size=4))}
        ).encode()
    if kind == "unknown_type":
        return json.dumps(envelope(f"fuzz.{draw(st.sampled_from(['happened', 'x', 'cancel']))}", tag, {})).encode()
    # A known type whose payload breaks the contract: a required field missing or of the wrong type.
    data = {
        "request_id": f"fuzz-{tag}",
        "booking_id": f"fuzz-{tag}",
        "requested_at": "2026-01-01T00:00:00Z",
        "actor": {"kind": "staff", "id": "s", "roles": []},
        "channel": "practice",
    }
    field = draw(st.sampled_from(["requested_at", "actor", "channel"]))
    if draw(st.booleans()):
        del data[field]
    else:
        # Not an integer: pydantic reads one as a Unix time, which would make requested_at valid.
        data[field] = draw(st.one_of(st.lists(st.integers(), max_size=2), st.just("not-a-value"), st.booleans()))
    return json.dumps(envelope("booking.cancellation_requested", f"fuzz-{tag}", data)).encode()


def poison_messages(count: int, seed: int = 0) -> list[bytes]:
    found: list[bytes] = []

    @settings(max_examples=count, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(_poison())
    def collect(raw: bytes) -> None:
        if len(found) < count:
            found.append(raw)

    collect()
    return found

"""A record that cannot be read is dead-lettered once per record, not once per position: after a
topic is made again (or the cluster's storage formatted anew) while the service's inbox is kept,
its offsets start over, and a new poison record at an old position must still get its dead
letter. Found when a test's poison record sat at an offset refused hours before on the topic's
earlier incarnation, and vanished without a dead letter."""

from __future__ import annotations

from dataclasses import dataclass

from shared.consumer import _position_id


@dataclass(frozen=True)
class Rec:
    topic: str = "upstream.practices.v1"
    partition: int = 1
    offset: int = 155
    timestamp: int = 1_796_000_000_000
    key: bytes | None = b"k"
    value: bytes | None = b"not json"
    headers: tuple[tuple[str, bytes], ...] = ()


def test_the_same_record_delivered_again_has_the_same_id() -> None:
    assert _position_id(Rec()) == _position_id(Rec())


def test_another_record_at_the_same_position_has_another_id() -> None:
    first = _position_id(Rec())
    assert _position_id(Rec(value=b"{}")) != first  # other bytes
    assert _position_id(Rec(timestamp=1_796_000_000_001)) != first  # sent at another time
    assert _position_id(Rec(value=None)) != _position_id(Rec(value=b"x"))  # a tombstone has an id too


def test_the_id_names_the_position_and_stays_short() -> None:
    made = _position_id(Rec(value=b"x" * 1_000_000))
    assert made.startswith("position:upstream.practices.v1:1:155:") and len(made) < 120

"""Dead letters for people: list them, show one, and replay one to where it came from.

Guarantees:
- A dead letter is named by where it lies: `<service>:<partition>:<offset>` on `dlq.<service>.v1`.
- A replay sends the original bytes, exactly as the dead letter keeps them, to the original topic
  with the original key, and waits for the broker's acknowledgement. The services' inbox makes a
  replay of something already handled harmless (the envelope id is the same).
- A dead letter whose original was kept only as a prefix (`original_value_truncated`) is never
  replayed: those bytes are not the message, and the source topic still holds the whole one
  (at the dead letter's original partition and offset).
- Reading joins no consumer group and commits nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..contracts.deadletter import MessageDeadLettered
from ..kafka import KafkaConnection
from ..topics import SERVICES, dead_letter_topic
from .bus import Record, open_bus, open_reader

LETTER_ID = re.compile(r"^(?P<service>[a-z-]+):(?P<partition>[0-9]{1,6}):(?P<offset>[0-9]{1,19})$")


class NotReplayable(Exception):
    """This dead letter cannot be replayed as it is; the sentence says why."""


@dataclass(frozen=True)
class DeadLetter:
    service: str
    partition: int
    offset: int
    letter: MessageDeadLettered | None  # None: the record on the dead-letter topic is unreadable

    @property
    def id(self) -> str:
        return f"{self.service}:{self.partition}:{self.offset}"


def parse_letter_id(letter_id: str) -> tuple[str, int, int]:
    match = LETTER_ID.match(letter_id)
    if not match or match["service"] not in SERVICES:
        raise ValueError(
            f"a dead letter is named <service>:<partition>:<offset>, with a service of {', '.join(SERVICES)}"
        )
    return match["service"], int(match["partition"]), int(match["offset"])


def read_letter(service: str, record: Record) -> DeadLetter:
    letter = None
    if record.value is not None:
        try:
            letter = MessageDeadLettered.model_validate(json.loads(record.value)["data"])
        except (ValueError, KeyError, TypeError):
            letter = None
    return DeadLetter(service, record.partition, record.offset, letter)


def replay_target(dead: DeadLetter) -> tuple[str, bytes | None, bytes]:
    """(topic, key, value) the replay sends; NotReplayable when it must not be sent."""
    letter = dead.letter
    if letter is None:
        raise NotReplayable(f"{dead.id} is not a readable dead letter")
    if letter.original_value_truncated:
        raise NotReplayable(
            f"{dead.id} kept only a prefix of the original ({letter.original_value_length} bytes); replay it from "
            f"{letter.original_topic} partition {letter.original_partition} offset {letter.original_offset}"
        )
    value = letter.original_value()
    if value is None:
        raise NotReplayable(f"{dead.id} is a tombstone: there is nothing to replay")
    key = letter.original_key.encode("utf-8") if letter.original_key is not None else None
    return letter.original_topic, key, value


async def list_letters(conn: KafkaConnection, services: list[str] | None = None) -> list[DeadLetter]:
    """Every dead letter still kept on the chosen services' topics, oldest first per partition."""
    chosen = services or list(SERVICES)
    by_topic = {dead_letter_topic(s): s for s in chosen}
    async with open_reader(conn, by_topic, from_beginning=True) as reader:
        records = await reader.drain()
    return [read_letter(by_topic[r.topic], r) for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset))]


async def find_letter(conn: KafkaConnection, letter_id: str) -> DeadLetter | None:
    service, partition, offset = parse_letter_id(letter_id)
    for dead in await list_letters(conn, [service]):
        if (dead.partition, dead.offset) == (partition, offset):
            return dead
    return None


async def replay(conn: KafkaConnection, dead: DeadLetter) -> tuple[str, int, int]:
    """Send the original again; returns (topic, partition, offset) where the broker put it."""
    topic, key, value = replay_target(dead)
    async with open_bus(conn) as bus:
        partition, offset = await bus.raw(topic, key, value)
    return topic, partition, offset

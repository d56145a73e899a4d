"""Every topic of the event contract (CONTRACT.md "Topics"), named once.

The names are binding: upstream systems and PMS connectors are built against them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .kafka import KafkaConnection

UPSTREAM_BOOKINGS = "upstream.bookings.v1"
UPSTREAM_PRACTICES = "upstream.practices.v1"
UPSTREAM_PROFESSIONALS = "upstream.professionals.v1"
# Second release: cards on file (patient.card_registered, patient.card_removed), read by billing.
UPSTREAM_PATIENTS = "upstream.patients.v1"
BOOKING_EVENTS = "booking.events.v1"
POLICY_REQUESTS = "policy.requests.v1"  # internal: booking -> cancellation-policy
POLICY_DECISIONS = "policy.decisions.v1"
PRACTICE_EVENTS = "practice.events.v1"  # cancellation-policy's answers to practice.configured
SCORING_EVENTS = "scoring.events.v1"
BILLING_COMMANDS = "billing.commands.v1"
BILLING_EVENTS = "billing.events.v1"
NOTIFICATION_EVENTS = "notification.events.v1"
PMS_SYNC_ACKS = "pms-sync.acks.v1"
PMS_SYNC_EVENTS = "pms-sync.events.v1"

# One outbound topic per PMS integration; the key is the practice's `pms.integration`.
PMS_INTEGRATION_TOPICS = {
    "praktika": "pms-sync.praktika.v1",
    "core_practice": "pms-sync.core-practice.v1",
}

SERVICES = (
    "booking",
    "cancellation-policy",
    "scoring",
    "billing",
    "notification",
    "pms-sync",
)


def dead_letter_topic(service: str) -> str:
    """`dlq.<service>.v1`: what that service could not process, with the reason."""
    return f"dlq.{service}.v1"


ALL_TOPICS = (
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
    UPSTREAM_PROFESSIONALS,
    UPSTREAM_PATIENTS,
    BOOKING_EVENTS,
    POLICY_REQUESTS,
    POLICY_DECISIONS,
    PRACTICE_EVENTS,
    SCORING_EVENTS,
    BILLING_COMMANDS,
    BILLING_EVENTS,
    NOTIFICATION_EVENTS,
    PMS_SYNC_ACKS,
    PMS_SYNC_EVENTS,
    *PMS_INTEGRATION_TOPICS.values(),
    *(dead_letter_topic(s) for s in SERVICES),
)


DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000  # Kafka's own default, stated
DEFAULT_DLQ_RETENTION_MS = 30 * 24 * 3600 * 1000  # dead letters wait for a person: longer


@dataclass(frozen=True)
class TopicSettings:
    """How contract topics are created: TOPIC_PARTITIONS, TOPIC_REPLICATION_FACTOR (3 on a managed
    cluster), TOPIC_RETENTION_MS and DLQ_RETENTION_MS (the dead-letter topics, kept longer)."""

    partitions: int = 6
    replication_factor: int = 1
    retention_ms: int = DEFAULT_RETENTION_MS
    dlq_retention_ms: int = DEFAULT_DLQ_RETENTION_MS

    def __post_init__(self) -> None:
        if self.partitions < 1 or self.replication_factor < 1:
            raise ValueError("TOPIC_PARTITIONS and TOPIC_REPLICATION_FACTOR must be at least 1.")
        if self.retention_ms < -1 or self.dlq_retention_ms < -1:
            raise ValueError("TOPIC_RETENTION_MS and DLQ_RETENTION_MS are milliseconds, or -1 for no limit.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TopicSettings:
        env = os.environ if environ is None else environ
        return cls(
            partitions=int(env.get("TOPIC_PARTITIONS") or 6),
            replication_factor=int(env.get("TOPIC_REPLICATION_FACTOR") or 1),
            retention_ms=int(env.get("TOPIC_RETENTION_MS") or DEFAULT_RETENTION_MS),
            dlq_retention_ms=int(env.get("DLQ_RETENTION_MS") or DEFAULT_DLQ_RETENTION_MS),
        )


DEAD_LETTER_TOPICS = frozenset(dead_letter_topic(s) for s in SERVICES)


def new_topic_args(topic: str, settings: TopicSettings) -> dict[str, Any]:
    """The arguments of the NewTopic that creates `topic`."""
    retention = settings.dlq_retention_ms if topic in DEAD_LETTER_TOPICS else settings.retention_ms
    return {
        "name": topic,
        "num_partitions": settings.partitions,
        "replication_factor": settings.replication_factor,
        "topic_configs": {"retention.ms": str(retention)},
    }


async def ensure_topics(
    bootstrap_servers: str | None = None,
    partitions: int | None = None,
    *,
    topics: TopicSettings | None = None,
    connection: KafkaConnection | None = None,
) -> list[str]:
    """Create every contract topic that does not exist yet; returns the ones created.

    Topic settings and the connection come from the environment unless given (shared.kafka);
    `partitions` overrides TOPIC_PARTITIONS. Existing topics are left as they are."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    settings = topics or TopicSettings.from_env()
    if partitions is not None:
        settings = replace(settings, partitions=partitions)
    admin = AIOKafkaAdminClient(**(connection or KafkaConnection.from_env(bootstrap_servers)).aiokafka_args())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in ALL_TOPICS if t not in existing]
        if missing:
            await admin.create_topics([NewTopic(**new_topic_args(t, settings)) for t in missing])
        return missing
    finally:
        await admin.close()


if __name__ == "__main__":  # python -m shared.topics: used by infra/up.sh and make run
    import asyncio

    created = asyncio.run(ensure_topics())
    print(f"topics: {len(ALL_TOPICS)} in the contract, {len(created)} created")

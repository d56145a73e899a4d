"""Every topic of the event contract (CONTRACT.md "Topics"), named once.

The names are binding: upstream systems and PMS connectors are built against them.
"""

from typing import Any

UPSTREAM_BOOKINGS = "upstream.bookings.v1"
UPSTREAM_PRACTICES = "upstream.practices.v1"
UPSTREAM_PROFESSIONALS = "upstream.professionals.v1"
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


async def ensure_topics(bootstrap_servers: str, partitions: int, **client_args: Any) -> list[str]:
    """Create every contract topic that does not exist yet; returns the ones created."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_args)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in ALL_TOPICS if t not in existing]
        if missing:
            await admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing])
        return missing
    finally:
        await admin.close()


if __name__ == "__main__":  # python -m shared.topics: used by infra/up.sh and make run
    import asyncio
    import os

    created = asyncio.run(
        ensure_topics(
            os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            int(os.environ.get("TOPIC_PARTITIONS", "6")),
        )
    )
    print(f"topics: {len(ALL_TOPICS)} in the contract, {len(created)} created")

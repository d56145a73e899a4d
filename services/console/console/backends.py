"""What the console talks to: the services over HTTP, and Kafka for dead letters, lag and people's decisions.

Guarantees:
- Every read-API call carries the signed-in person's own token, so each service applies its own
  practice scoping and roles: the console never widens what a person may see.
- A service that does not answer, or answers an error, is shown as such; a page never fails
  because one service is down.
- Kafka is reached only through shared.kafka (the environment's KAFKA_* settings, or
  `.local/clients/<CONSOLE_KAFKA_CLIENT>.env`); the console publishes only people's decisions
  (`excuse.reviewed`, `professional.reinstated`, `charge.review_decided`) and replays of dead letters, and reads without a consumer group.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from shared.contracts.upstream import ChargeReviewDecided, ExcuseReviewed, ProfessionalReinstated
from shared.kafka import KafkaConnection
from shared.tools import dlq
from shared.tools.bus import OBSERVER, connection_as, open_bus, writer_of
from shared.topics import BILLING_COMMANDS, SERVICES, UPSTREAM_PROFESSIONALS

SOURCE = "tools/console"


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no answer at all
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Services:
    def __init__(self, urls: dict[str, str], timeout: float) -> None:
        self.urls = urls
        self._client = httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        await self._client.aclose()

    async def get(self, service: str, path: str, token: str | None, params: dict[str, Any] | None = None) -> Answer:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = await self._client.get(f"{self.urls[service]}{path}", params=params, headers=headers)
        except httpx.HTTPError:
            return Answer(0, None)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        return Answer(response.status_code, body)

    async def metrics(self, service: str) -> dict[str, float]:
        """Outbox backlog, parked rows and message counts from the service's /metrics."""
        answer = await self.get(service, "/metrics", None)
        if not answer.ok or not isinstance(answer.body, str):
            return {}
        return summarise_metrics(answer.body)


METRICS = {
    "cancellations_outbox_unpublished": "outbox backlog",
    "cancellations_outbox_parked_rows": "parked rows",
    "cancellations_messages": "messages",
}


def summarise_metrics(text: str) -> dict[str, float]:
    """`outbox backlog`, `parked rows` and `messages <outcome>` totals from Prometheus text."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        name = METRICS.get(family.name)
        if name is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = f"{name} {sample.labels['outcome']}" if "outcome" in sample.labels else name
            found[key] = found.get(key, 0.0) + sample.value
    return found


@dataclass(frozen=True)
class Lag:
    group: str
    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


class Broker:
    """Kafka, as the console needs it."""

    def __init__(self, client: str | None = None) -> None:
        self._client = client

    def _reader(self) -> KafkaConnection:
        return connection_as(OBSERVER, self._client)

    async def dead_letters(self) -> list[dlq.DeadLetter]:
        return await dlq.list_letters(self._reader())

    async def find_letter(self, letter_id: str) -> dlq.DeadLetter | None:
        return await dlq.find_letter(self._reader(), letter_id)

    async def replay(self, dead: dlq.DeadLetter) -> tuple[str, int, int]:
        topic, _, _ = dlq.replay_target(dead)
        return await dlq.replay(writer_of(topic, self._client), dead)

    async def review_excuse(self, professional_id: str, excuse_id: str, decision: str, reviewer_id: str) -> str:
        """Publish `excuse.reviewed`, keyed by the professional; returns the event id."""
        payload = ExcuseReviewed.new(
            excuse_id=excuse_id, decision=decision, reviewer_id=reviewer_id, reviewed_at=datetime.now(UTC)
        )
        async with open_bus(writer_of(UPSTREAM_PROFESSIONALS, self._client)) as bus:
            sent = await bus.event(
                UPSTREAM_PROFESSIONALS,
                payload,
                subject=professional_id,
                source=SOURCE,
                correlation_id=str(uuid.uuid4()),
            )
        return str(sent["id"])

    async def reinstate_professional(self, professional_id: str, reviewer_id: str) -> str:
        """Publish `professional.reinstated`, keyed by the professional; returns the event id."""
        payload = ProfessionalReinstated.new(
            professional_id=professional_id, reviewer_id=reviewer_id, reinstated_at=datetime.now(UTC)
        )
        async with open_bus(writer_of(UPSTREAM_PROFESSIONALS, self._client)) as bus:
            sent = await bus.event(
                UPSTREAM_PROFESSIONALS,
                payload,
                subject=professional_id,
                source=SOURCE,
                correlation_id=str(uuid.uuid4()),
            )
        return str(sent["id"])

    async def decide_fee(self, decision: ChargeReviewDecided) -> str:
        """Publish `charge.review_decided` on billing.commands.v1 (as `staff-tools`), keyed by the
        charge; returns the event id."""
        async with open_bus(writer_of(BILLING_COMMANDS, self._client)) as bus:
            sent = await bus.event(
                BILLING_COMMANDS,
                decision,
                subject=decision.charge_id,
                source=SOURCE,
                correlation_id=str(uuid.uuid4()),
            )
        return str(sent["id"])

    async def lag(self) -> list[Lag]:
        """Each service's consumer group: committed offset and end offset per topic and partition."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        args = self._reader().aiokafka_args()
        admin = AIOKafkaAdminClient(**args)
        consumer = AIOKafkaConsumer(**args, group_id=None, enable_auto_commit=False)
        await admin.start()
        await consumer.start()
        try:
            rows: list[Lag] = []
            for group in SERVICES:
                committed = await admin.list_consumer_group_offsets(group)
                if not committed:
                    continue
                ends = await consumer.end_offsets(list(committed))
                for tp, meta in sorted(committed.items(), key=lambda kv: (kv[0].topic, kv[0].partition)):
                    offset = meta.offset if meta.offset >= 0 else None
                    rows.append(Lag(group, tp.topic, tp.partition, offset, ends.get(tp, 0)))
            return rows
        finally:
            await consumer.stop()
            await admin.close()

"""The Prometheus surface (shared.metrics): one prefix for every name, business counters that
count published facts, consumer lag from the consumer's own positions, and the migration Job's
entry point finding the same migrations as the service."""

from __future__ import annotations

import importlib
import json
import uuid
from dataclasses import dataclass, field

import pytest
from aiokafka.errors import IllegalStateError
from aiokafka.structs import TopicPartition
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from shared import metrics
from shared.migrate import migrations_of
from shared.outbox import count_published
from shared.service import consumer_lag
from shared.topics import SERVICES


def declared() -> list[MetricWrapperBase]:
    return [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]


def test_every_metric_is_prefixed_and_registered() -> None:
    names = [m._name for m in declared()]
    # What ops asked for (issue 19): lag, outbox backlog, parked rows, dead letters, business facts.
    assert {
        "cancellations_consumer_lag",
        "cancellations_outbox_unpublished",
        "cancellations_outbox_parked_rows",
        "cancellations_dead_letters",
        "cancellations_fees_raised",
        "cancellations_fees_collected",
        "cancellations_fees_refunded",
        "cancellations_notifications_failed",
        "cancellations_pms_backlog",
    } <= set(names), names
    assert [n for n in names if not n.startswith("cancellations_")] == []
    registered = {m.name for m in REGISTRY.collect()}
    assert set(names) <= registered


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_published_events_count_by_type_and_as_business_facts() -> None:
    service = "billing-metrics-test"
    before = {
        name: sample(name, service=service)
        for name in (
            "cancellations_fees_raised_total",
            "cancellations_fees_collected_total",
            "cancellations_fees_refunded_total",
            "cancellations_notifications_failed_total",
        )
    }
    count_published(
        service,
        [
            (t, envelope(t))
            for t in (
                "charge.created",
                "charge.created",
                "payment.captured",
                "deposit.kept",
                "deposit.refunded",
                "payment.failed",
            )
        ],
    )
    after = {name: sample(name, service=service) for name in before}
    assert {name: after[name] - before[name] for name in before} == {
        "cancellations_fees_raised_total": 2,
        "cancellations_fees_collected_total": 2,
        "cancellations_fees_refunded_total": 1,
        "cancellations_notifications_failed_total": 0,
    }
    assert sample("cancellations_events_published_total", service=service, type="payment.failed") == 1
    assert sample("cancellations_events_published_total", service=service, type="charge.created") == 2


def envelope(event_type: str, **data: object) -> str:
    """An outbox row's payload as the relay reads it (the envelope's JSON text)."""
    return json.dumps({"specversion": "1.0", "id": str(uuid.uuid4()), "type": event_type, "data": data})


def test_a_fee_in_review_is_raised_once_when_it_is_final() -> None:
    """billing announces a fee in review twice (pending_review, then due when approved, edited or
    its window ended): it counts as raised once, at the final one; a fee waived in review never
    counts; a fee without review (due, or an older producer's charge.created without status)
    counts at once."""
    service = "billing-fees-raised-test"
    raised = "cancellations_fees_raised_total"
    published = "cancellations_events_published_total"

    def count(*statuses: str | None) -> tuple[float, float]:
        before = sample(raised, service=service), sample(published, service=service, type="charge.created")
        count_published(
            service,
            [("charge.created", envelope("charge.created", **({"status": s} if s else {}))) for s in statuses],
        )
        return (
            sample(raised, service=service) - before[0],
            sample(published, service=service, type="charge.created") - before[1],
        )

    assert count("pending_review") == (0, 1)  # in review: not raised yet
    assert count("due") == (1, 1)  # approved, edited or the window ended: raised now
    assert count("pending_review", "due") == (1, 2)  # one fee through review: once
    assert count("pending_review") == (0, 1)  # waived in review (charge.waived): never raised
    assert count("due", None) == (2, 2)  # without review, and from an older producer
    assert "once when final" in metrics.FEES_RAISED._documentation  # the help text says so


def test_every_business_event_is_a_contract_event_type() -> None:
    from shared.contracts.registry import models_for
    from shared.topics import ALL_TOPICS

    known = {model.event_type for topic in ALL_TOPICS for model in models_for(topic).values()}
    assert set(metrics.BUSINESS_EVENTS) <= known, set(metrics.BUSINESS_EVENTS) - known
    assert set(metrics.BUSINESS_EVENT_WHEN) <= set(metrics.BUSINESS_EVENTS)


@dataclass
class AssignedConsumer:
    """What aiokafka's AIOKafkaConsumer offers for lag: its assignment, the highwater of the last
    fetch, and its position (raising IllegalStateError for a partition revoked meanwhile)."""

    highwaters: dict[TopicPartition, int | None]
    positions: dict[TopicPartition, int]
    revoked: set[TopicPartition] = field(default_factory=set)

    def assignment(self) -> set[TopicPartition]:
        return set(self.highwaters)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters[tp]

    async def position(self, tp: TopicPartition) -> int:
        if tp in self.revoked:
            raise IllegalStateError(f"Partition {tp} is not assigned")
        return self.positions[tp]


async def test_consumer_lag_is_highwater_minus_position_per_assigned_partition() -> None:
    behind, caught_up, unfetched, revoked = (
        TopicPartition("booking.events.v1", 0),
        TopicPartition("booking.events.v1", 3),
        TopicPartition("upstream.bookings.v1", 1),
        TopicPartition("upstream.bookings.v1", 2),
    )
    consumer = AssignedConsumer(
        highwaters={behind: 120, caught_up: 40, unfetched: None, revoked: 9},
        positions={behind: 100, caught_up: 40, unfetched: 0, revoked: 0},
        revoked={revoked},
    )
    assert await consumer_lag(consumer) == {("booking.events.v1", 0): 20, ("booking.events.v1", 3): 0}
    assert await consumer_lag(None) == {}


@pytest.mark.parametrize("service", SERVICES)
def test_the_migration_job_applies_the_migrations_the_service_applies(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "development")  # billing's gateway defaults to the sandbox
    app = importlib.import_module(f"{service.replace('-', '_')}.app")
    expected = app.definition().migrations.resolve()
    assert migrations_of(service).resolve() == expected
    assert sorted(p.name for p in expected.glob("*.sql")), expected

"""Prometheus metrics every service exposes on /metrics (one registry per process).

Every name starts with `cancellations_`, so a shared Prometheus tells ours from anyone else's;
deploy/prometheus/alerts.yml and deploy/grafana/cancellations.json use only names declared here
(infra/check-deploy.sh checks it).

Counters count where the thing is committed or published, never before: consumed messages and
dead letters once their batch committed, events when the relay has the broker's
acknowledgement. Gauges that describe a table or the consumer's assignment (outbox backlog,
parked rows, consumer lag, PMS backlog) are read when Prometheus scrapes (`refresh` in
shared.service), each with one indexed query, so they are as fresh as the scrape and cost
nothing between scrapes.
"""

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "cancellations_messages_total",
    "Messages consumed, by outcome (processed, duplicate, ignored, dead_lettered)",
    ["service", "topic", "outcome"],
)
BATCH_SECONDS = Histogram(
    "cancellations_consume_batch_seconds",
    "Time to handle one consumed batch in one transaction",
    ["service"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TRANSIENT_RETRIES = Counter(
    "cancellations_transient_retries_total",
    "Batches retried after a transient fault (database or broker down)",
    ["service"],
)
DEAD_LETTERS = Counter(
    "cancellations_dead_letters_total",
    "Dead letters written to dlq.<service>.v1, by reason (contract_violation: the record breaks the"
    " contract; handler_failed: its handler failed for good)",
    ["service", "reason"],
)
CONSUMER_LAG = Gauge(
    "cancellations_consumer_lag",
    "Records not yet handed to this replica's consumer, per assigned partition (highwater minus position)",
    ["service", "topic", "partition"],
)
OUTBOX_PUBLISHED = Counter("cancellations_outbox_published_total", "Outbox rows published to Kafka", ["service"])
OUTBOX_UNPUBLISHED = Gauge(
    "cancellations_outbox_unpublished",
    "Outbox rows waiting to be published (neither published nor parked)",
    ["service"],
)
OUTBOX_OLDEST_UNPUBLISHED_SECONDS = Gauge(
    "cancellations_outbox_oldest_unpublished_seconds",
    "Age of the oldest outbox row waiting to be published (0 when none waits)",
    ["service"],
)
OUTBOX_PARKED_ROWS = Gauge(
    "cancellations_outbox_parked_rows",
    "Outbox rows parked now (the broker refused them for good); each needs a person",
    ["service"],
)
OUTBOX_PARKED = Counter(
    "cancellations_outbox_parked_total",
    "Outbox rows the broker refused for good, set aside with their reason",
    ["service"],
)
EVENTS_PUBLISHED = Counter(
    "cancellations_events_published_total",
    "Events the relay published (broker acknowledged), by event type",
    ["service", "type"],
)
BACKGROUND_ROWS = Counter(
    "cancellations_background_rows_total",
    "Rows background jobs claimed, by job and outcome (handled, failed for good, deferred: a call's outcome unknown)",
    ["service", "job", "outcome"],
)
BACKGROUND_RETRIES = Counter(
    "cancellations_background_retries_total",
    "Background rounds rolled back and retried after a fault (database down, a timeout)",
    ["service", "job"],
)

# Business counters: counted by the relay when the event that states the fact is published, so a
# fact counts once whichever handler or job produced it (a republish after a relay crash, before
# it marked the row, counts it again: rare, and never a missed fact).
FEES_RAISED = Counter(
    "cancellations_fees_raised_total",
    "Fees raised, each once when final: charge.created published with a status other than pending_review"
    " (at once without review; on approval, edit or the window's end after review; a fee waived in review never)",
    ["service"],
)
FEES_COLLECTED = Counter(
    "cancellations_fees_collected_total",
    "Fees collected (payment.captured, or deposit.kept: the fee taken from a deposit)",
    ["service"],
)
FEES_REFUNDED = Counter(
    "cancellations_fees_refunded_total",
    "Money given back (deposit.refunded, credit_note.issued)",
    ["service"],
)
NOTIFICATIONS_FAILED = Counter(
    "cancellations_notifications_failed_total", "Notifications that failed for good (notification.failed)", ["service"]
)
BUSINESS_EVENTS: dict[str, Counter] = {
    "charge.created": FEES_RAISED,
    "payment.captured": FEES_COLLECTED,
    "deposit.kept": FEES_COLLECTED,
    "deposit.refunded": FEES_REFUNDED,
    "credit_note.issued": FEES_REFUNDED,
    "notification.failed": NOTIFICATIONS_FAILED,
}


def _final_fee(data: Mapping[str, Any]) -> bool:
    """A fee in staff review is announced twice, `pending_review` and then `due` once final: it is
    raised once, when final (an older producer's charge.created, without status, is final)."""
    return data.get("status") != "pending_review"


# Business events that state their fact only when this says so of their `data`.
BUSINESS_EVENT_WHEN: dict[str, Callable[[Mapping[str, Any]], bool]] = {"charge.created": _final_fee}

PMS_BACKLOG = Gauge(
    "cancellations_pms_backlog",
    "PMS syncs not yet acknowledged (waiting for their request, or sent and awaiting the connector's ack)",
    ["service", "integration"],
)
PMS_BACKLOG_OLDEST_SECONDS = Gauge(
    "cancellations_pms_backlog_oldest_seconds",
    "Age of the oldest PMS sync not yet acknowledged (0 when none)",
    ["service"],
)

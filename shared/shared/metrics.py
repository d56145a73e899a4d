"""Prometheus metrics every service exposes on /metrics (one registry per process)."""

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "messages_total",
    "Messages consumed, by outcome (processed, duplicate, ignored, dead_lettered)",
    ["service", "topic", "outcome"],
)
BATCH_SECONDS = Histogram(
    "consume_batch_seconds",
    "Time to handle one consumed batch in one transaction",
    ["service"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TRANSIENT_RETRIES = Counter(
    "transient_retries_total", "Batches retried after a transient fault (database or broker down)", ["service"]
)
OUTBOX_PUBLISHED = Counter("outbox_published_total", "Outbox rows published to Kafka", ["service"])
OUTBOX_UNPUBLISHED = Gauge("outbox_unpublished", "Outbox rows waiting after the last empty poll", ["service"])
OUTBOX_PARKED = Counter(
    "outbox_parked_total", "Outbox rows the broker refused for good, set aside with their reason", ["service"]
)
BACKGROUND_ROWS = Counter(
    "background_rows_total",
    "Rows background jobs claimed, by job and outcome (handled, failed for good, deferred: a call's outcome unknown)",
    ["service", "job", "outcome"],
)
BACKGROUND_RETRIES = Counter(
    "background_retries_total",
    "Background rounds rolled back and retried after a fault (database down, a timeout)",
    ["service", "job"],
)

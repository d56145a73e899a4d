"""The idempotent consumer: a message seen twice has its effect once.

A consumer claims an event id in the same transaction as the effect; the claim and the effect
commit together or not at all, so a redelivery (after a crash, a rebalance, a replay) finds
the claim and does nothing.
"""

from __future__ import annotations

import asyncpg

from .db import Connection


async def claim(conn: Connection, consumer: str, event_id: str) -> bool:
    """True when this is the first time `consumer` sees `event_id` (inside the caller's transaction).

    A concurrent claim of the same id waits on the row lock until the other transaction ends,
    so two replicas never both believe they are first.
    """
    claimed = await conn.fetchval(
        "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
        consumer,
        event_id,
    )
    return bool(claimed)


async def claim_many(conn: Connection, consumer: str, event_ids: list[str]) -> set[str]:
    """The ids of `event_ids` seen for the first time, claimed in one statement (same guarantee
    as `claim`, for a whole batch)."""
    if not event_ids:
        return set()
    rows = await conn.fetch(
        "INSERT INTO inbox (consumer, event_id) SELECT $1, unnest($2::text[])"
        " ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        event_ids,
    )
    return {r["event_id"] for r in rows}


# Deletes at most `$2` rows older than `$1` hours. Rows another transaction holds (a replica
# pruning at the same moment) are skipped, not waited for; the TID scan keeps the DELETE cheap.
_PRUNE_BATCH = (
    "DELETE FROM inbox WHERE ctid = ANY(ARRAY("
    " SELECT ctid FROM inbox WHERE processed_at < now() - $1::float8 * interval '1 hour'"
    " LIMIT $2 FOR UPDATE SKIP LOCKED))"
)


async def prune_batch(conn: Connection, *, retention_hours: float, limit: int) -> list[asyncpg.Record]:
    """Delete at most `limit` claims older than `retention_hours` inside the caller's
    transaction, skipping rows another replica holds; returns one row per claim deleted. The
    background job (`shared.service.inbox_pruning`) runs it a batch per transaction.

    A message redelivered after its claim was pruned is handled a second time, so the retention
    must be far longer than any redelivery window: the retention of the topics the service
    consumes, and of its consumer group's committed offsets (a group whose offsets expired
    starts again from the earliest record). Kafka's defaults are 7 days for both;
    INBOX_RETENTION_HOURS defaults to 14 days.
    """
    return await conn.fetch(_PRUNE_BATCH + " RETURNING 1", float(retention_hours), limit)

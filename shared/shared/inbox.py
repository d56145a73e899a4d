"""The idempotent consumer: a message seen twice has its effect once.

A consumer claims an event id in the same transaction as the effect; the claim and the effect
commit together or not at all, so a redelivery (after a crash, a rebalance, a replay) finds
the claim and does nothing.
"""

from __future__ import annotations

import asyncpg


async def claim(conn: asyncpg.Connection, consumer: str, event_id: str) -> bool:
    """True when this is the first time `consumer` sees `event_id` (inside the caller's transaction).

    A concurrent claim of the same id waits on the row lock until the other transaction ends,
    so two replicas never both believe they are first.
    """
    claimed = await conn.fetchval(
        "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING RETURNING true",
        consumer,
        event_id,
    )
    return bool(claimed)


async def claim_many(conn: asyncpg.Connection, consumer: str, event_ids: list[str]) -> set[str]:
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

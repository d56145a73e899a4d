"""The review window: a fee raised `pending_review` that staff did not decide by its
`review_until` is approved (a `DueWork` on shared.background).

Guarantees: due fees are claimed with `FOR UPDATE SKIP LOCKED`, so with any number of replicas
each is approved once; the approval (the charge's final status, the audit row and `charge.created`
with status `due`) commits with the claim, a savepoint per fee. A staff decision and the window's
end cannot both win: both lock the charge's row and act only on a fee still `pending_review`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from shared.background import DueWork, WorkUnit

from . import handlers, repository
from .settings import BillingSettings


def review_expiry(settings: BillingSettings) -> DueWork[Any, Any]:
    """Background job: approve the fees whose review window ended undecided, every
    REVIEW_CHECK_INTERVAL_SECONDS, up to CAPTURE_BATCH_SIZE at a time."""

    async def claim(conn: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
        return await repository.claim_due_reviews(conn, now, limit)

    async def act(unit: WorkUnit[Any], charge: Any) -> None:
        terms = handlers.charge_terms(charge)
        await handlers.approve_charge(
            unit,
            charge,
            terms,
            at=charge["review_until"],  # it became final when the window ended, whenever this runs
            actor=f"service/{unit.service}",
            why="the review window ended undecided",
            action="review_expired",
        )

    return DueWork(
        name="approve_unreviewed_fees",
        claim=claim,
        act=act,
        correlation=lambda charge: charge["correlation_id"],
        key=lambda charge: charge["charge_id"],
        interval_seconds=settings.review_check_interval_seconds,
        batch_size=settings.capture_batch_size,
    )

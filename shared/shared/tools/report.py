"""Cancellation and no-show rates from booking's read API (`GET /reports/cancellations`), as rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

COLUMNS = (
    ("bookings", "bookings"),
    ("cancelled", "cancelled"),
    ("timely", "timely"),
    ("late", "late"),
    ("no_shows", "no-shows"),
    ("completed", "completed"),
    ("cancellation_rate", "cancel %"),
    ("no_show_rate", "no-show %"),
    ("late_share_of_cancellations", "late share %"),
)


async def fetch_report(
    client: httpx.AsyncClient,
    booking_url: str,
    token: str,
    *,
    starts_from: datetime,
    starts_before: datetime,
    group_by: str = "practice",
    practice_id: str | None = None,
) -> dict[str, Any]:
    params = {"from": starts_from.isoformat(), "to": starts_before.isoformat(), "group_by": group_by}
    if practice_id:
        params["practice_id"] = practice_id
    answer = await client.get(
        f"{booking_url}/reports/cancellations", params=params, headers={"Authorization": f"Bearer {token}"}
    )
    answer.raise_for_status()
    report: dict[str, Any] = answer.json()
    return report


def percent(rate: float | None) -> str:
    return "–" if rate is None else f"{100 * rate:.1f}"


def rows(report: dict[str, Any]) -> list[list[str]]:
    """One row of text per group: practice, key, then COLUMNS (rates as percentages)."""
    out = []
    for group in report["groups"]:
        row = [str(group["practice_id"]), str(group.get("key") or "")]
        for field, _ in COLUMNS:
            value = group.get(field)
            row.append(percent(value) if field.endswith("rate") or field.endswith("cancellations") else str(value))
        out.append(row)
    return out

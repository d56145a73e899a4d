"""What each service asked of Postgres during a phase, read from pg_stat_statements (loaded by
infra/postgres.sh): statements executed and their execution time, per database role, so per
service (each has its own role), and the statements called most. Query texts there are
normalised (constants become $1, $2...), so no data of a patient reaches the results.

Without the extension (a server started before it was configured) the figures are simply
absent, and the bench says how to get them."""

from __future__ import annotations

from typing import Any

import asyncpg


def _service(role: str) -> str:
    """A service's runtime role is its schema's name (shared.provision); the baseline's bare
    loops and the harness connect as the superuser."""
    return role.replace("_", "-")


class StatementMeter:
    """`async with StatementMeter(dsn) as meter: ...`; then `meter.result(cancellations)`."""

    def __init__(self, admin_dsn: str, *, top: int = 15) -> None:
        self.admin_dsn, self.top = admin_dsn, top
        self.rows: list[asyncpg.Record] | None = None
        self.missing: str | None = None

    async def __aenter__(self) -> StatementMeter:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await conn.execute("SELECT pg_stat_statements_reset()")
        except asyncpg.PostgresError as exc:
            self.missing = f"{type(exc).__name__}: restart Postgres (make down && make up) to load pg_stat_statements"
        finally:
            await conn.close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.missing:
            return
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            self.rows = await conn.fetch(
                """SELECT r.rolname AS role, s.calls, s.total_exec_time AS ms, s.query
                   FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
                   WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                     AND s.query NOT LIKE '%pg_stat_statements%'"""
            )
        finally:
            await conn.close()

    def result(self, cancellations: int) -> dict[str, Any]:
        if self.rows is None:
            return {"missing": self.missing or "not measured"}
        per: dict[str, dict[str, Any]] = {}
        for row in self.rows:
            s = per.setdefault(_service(row["role"]), {"calls": 0, "ms": 0.0, "queries": []})
            s["calls"] += row["calls"]
            s["ms"] += row["ms"]
            s["queries"].append((row["calls"], row["ms"], " ".join(row["query"].split())[:160]))
        out: dict[str, Any] = {}
        for service, s in sorted(per.items()):
            top = sorted(s["queries"], reverse=True)[: self.top]
            out[service] = {
                "statements_per_cancellation": round(s["calls"] / cancellations, 2),
                "exec_ms_per_cancellation": round(s["ms"] / cancellations, 3),
                "top": [
                    {"per_cancellation": round(calls / cancellations, 2), "ms": round(ms, 1), "query": q}
                    for calls, ms, q in top
                ],
            }
        total_calls = sum(s["calls"] for s in per.values())
        out["total"] = {"statements_per_cancellation": round(total_calls / cancellations, 2)}
        return out

"""Audit retention by partition: create day partitions ahead, drop the ones past retention.

Acts on one environment only (the recorder's own): the tables are partitioned by environment,
then by UTC day, so a drop can never reach another environment's rows. A day partition is
dropped once the whole day is older than the retention period, so a row lives at least that
long and less than one day more. Safe with several recorders: the SQL functions serialise on
a per-environment advisory lock, and a partition already dropped is simply not found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg


@dataclass(frozen=True)
class Retention:
    events_days: int
    invocations_days: int
    ahead_days: int


@dataclass
class Pass:
    created: int = 0
    dropped: list[str] = field(default_factory=list)


async def run(pool: asyncpg.Pool, env: str, policy: Retention, now: datetime | None = None) -> Pass:
    """One retention pass: partitions for today and `ahead_days` more, then drop what expired."""
    now = now or datetime.now(UTC)
    today = now.date()
    done = Pass()
    done.created = await pool.fetchval(
        "select audit_ensure_partitions($1, $2, $3)", env, today, today + timedelta(days=policy.ahead_days)
    )
    for table, days in (("events", policy.events_days), ("invocations", policy.invocations_days)):
        rows = await pool.fetch(
            "select audit_drop_partitions($1, $2, $3) as name", env, table, now - timedelta(days=days)
        )
        done.dropped += [r["name"] for r in rows]
    return done

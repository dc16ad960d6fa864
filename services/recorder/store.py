"""The recorder's SQL: batched idempotent writes of events, and trace reads (bodies as stored,
for the caller to decode as their event models).

The tables are partitioned by environment and UTC day (migration 0004): a write first makes
sure the day partitions it needs exist, outside the write's transaction so that the
per-environment lock this takes is held only for that. A recorder remembers the days from today
on that it has made sure of (`Partitions`): retention never drops those, so each batch of a
running recorder costs no partition check. A batch is one transaction of one statement per
table, whatever its size: rows go in as arrays (`unnest`), not one statement execution per row.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg
import orjson

from shared.contracts import ConfigEvent, Event, InvocationEvent

INSERT_EVENTS = """
insert into events (env, event_id, kind, ts, service, invocation_id, trace_id, body)
select e.env, e.event_id, e.kind, e.ts, e.service, e.invocation_id, e.trace_id, e.body::jsonb
from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[],
            $8::text[]) as e(env, event_id, kind, ts, service, invocation_id, trace_id, body)
on conflict (env, event_id, ts) do nothing
"""
UPSERT_INVOCATIONS = """
insert into invocations (env, invocation_id, ts, workflow, session_id, agent, status, provider, model,
                         prompt_tokens, completion_tokens, latency_ms, error_code, trace_id,
                         config_version, body, cost_usd)
select i.env, i.invocation_id, i.ts, i.workflow, i.session_id, i.agent, i.status, i.provider, i.model,
       i.prompt_tokens, i.completion_tokens, i.latency_ms, i.error_code, i.trace_id, i.config_version,
       i.body::jsonb, i.cost_usd
from unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::int[], $11::int[], $12::float8[], $13::text[], $14::text[],
            $15::text[], $16::text[], $17::float8[])
     as i(env, invocation_id, ts, workflow, session_id, agent, status, provider, model, prompt_tokens,
          completion_tokens, latency_ms, error_code, trace_id, config_version, body, cost_usd)
on conflict (env, invocation_id, ts) do update set
    status = excluded.status, provider = excluded.provider, model = excluded.model,
    prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens,
    latency_ms = excluded.latency_ms, error_code = excluded.error_code, body = excluded.body,
    cost_usd = excluded.cost_usd
"""
# An invocation recorded again later (held for review, then answered) keeps one row: the newest.
# The key includes `ts`, so the older row is removed explicitly, looked for in the partitions of
# the last SUPERSEDE_WINDOW only.
SUPERSEDE_WINDOW = timedelta(days=7)
DELETE_SUPERSEDED = """
delete from invocations i using unnest($2::text[], $3::timestamptz[]) as n(id, ts)
where i.env = $1 and i.ts >= $4 and i.invocation_id = n.id and i.ts < n.ts
"""
INSERT_CONFIG = """
insert into config_versions (env, version, applied_at, applied_by, checksum, source, policy)
values ($1, $2, $3, $4, $5, $6, $7::jsonb)
on conflict (env, version) do nothing
"""


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


class Partitions:
    """The (environment, day) partitions a recorder has made sure of, from today on: retention
    only drops whole days past a retention of at least one day, so these stay."""

    def __init__(self) -> None:
        self._ensured: set[tuple[str, date]] = set()

    async def ensure(self, conn: asyncpg.Connection, days: set[tuple[str, date]]) -> None:
        today = datetime.now(UTC).date()
        for env, day in sorted(days - self._ensured):
            await conn.execute("select audit_ensure_partitions($1, $2, $2)", env, day)
            if day >= today:
                self._ensured.add((env, day))


def _columns(rows: list[tuple]) -> list[list]:
    """Rows as one list per column: the arrays a batch statement unnests."""
    return [list(column) for column in zip(*rows, strict=True)]


async def write_batch(pool: asyncpg.Pool, events: list[Event], partitions: Partitions | None = None) -> None:
    """Write a batch of events in one transaction; replays of the same event are no-ops."""
    event_rows, invocation_rows, config_rows = {}, [], []
    for e in events:
        body = e.model_dump_json()  # every field, nulls included: one shape per kind
        ts = _ts(e.ts)
        invocation_id = getattr(e, "invocation_id", None)
        row = (e.env, e.event_id, e.kind.value, ts, e.service, invocation_id, e.trace_id, body)
        event_rows.setdefault((e.env, e.event_id, ts), row)  # an event delivered twice in one batch
        if isinstance(e, InvocationEvent):
            invocation_rows.append(
                (
                    e.env,
                    e.invocation_id,
                    ts,
                    e.workflow,
                    e.session_id,
                    e.agent,
                    e.status.value,
                    e.provider,
                    e.model,
                    e.prompt_tokens,
                    e.completion_tokens,
                    e.latency_ms,
                    e.error.code if e.error else None,
                    e.trace_id,
                    e.config_version,
                    body,
                    e.cost_usd,
                )
            )
        elif isinstance(e, ConfigEvent) and e.action == "applied":
            config_rows.append(
                (
                    e.env,
                    e.version,
                    _ts(e.applied_at),
                    e.applied_by,
                    e.checksum,
                    e.source,
                    orjson.dumps(e.policy).decode(),
                )
            )
    newest = {}  # per (env, invocation): the latest row of this batch
    for row in sorted(invocation_rows, key=lambda r: r[2]):
        newest[row[0], row[1]] = row
    invocation_rows = list(newest.values())
    days = {(r[0], r[3].date()) for r in event_rows.values()}
    async with pool.acquire() as conn:
        await (partitions or Partitions()).ensure(conn, days)
        async with conn.transaction():
            if event_rows:
                await conn.execute(INSERT_EVENTS, *_columns(list(event_rows.values())))
            for env in {r[0] for r in invocation_rows}:
                rows = [r for r in invocation_rows if r[0] == env]
                stamps = [r[2] for r in rows]
                await conn.execute(
                    DELETE_SUPERSEDED, env, [r[1] for r in rows], stamps, min(stamps) - SUPERSEDE_WINDOW
                )
            if invocation_rows:
                await conn.execute(UPSERT_INVOCATIONS, *_columns(invocation_rows))
            if config_rows:
                await conn.executemany(INSERT_CONFIG, config_rows)


async def read_trace(pool: asyncpg.Pool, env: str, invocation_id: str) -> tuple[bytes | None, list[bytes]]:
    """The invocation's summary row and every event that names it, oldest first, as of one
    moment (a batch committed between the two reads would show events without their row)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(
            "select body from invocations where env = $1 and invocation_id = $2 order by ts desc limit 1",
            env,
            invocation_id,
        )
        events = await conn.fetch(
            "select body from events where env = $1 and invocation_id = $2 order by ts, kind",
            env,
            invocation_id,
        )
    return (row["body"].encode() if row else None), [r["body"].encode() for r in events]


async def count_events(pool: asyncpg.Pool, env: str, kind: str, invocation_ids: list[str]) -> tuple[int, int]:
    """(events of `kind` naming any of the ids, how many distinct ids have one)."""
    row = await pool.fetchrow(
        "select count(*) as n, count(distinct invocation_id) as ids from events "
        "where env = $1 and kind = $2 and invocation_id = any($3::text[])",
        env,
        kind,
        invocation_ids,
    )
    return int(row["n"]), int(row["ids"])

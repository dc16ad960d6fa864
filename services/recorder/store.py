"""The recorder's SQL: batched idempotent writes of events, and trace reads."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import orjson

INSERT_EVENT = """
insert into events (env, event_id, kind, ts, service, invocation_id, trace_id, body)
values ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)
on conflict (env, event_id) do nothing
"""
UPSERT_INVOCATION = """
insert into invocations (env, invocation_id, ts, workflow, session_id, agent, status, provider, model,
                         prompt_tokens, completion_tokens, latency_ms, error_code, trace_id,
                         config_version, body)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::jsonb)
on conflict (env, invocation_id) do update set
    ts = excluded.ts, status = excluded.status, provider = excluded.provider, model = excluded.model,
    prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens,
    latency_ms = excluded.latency_ms, error_code = excluded.error_code, body = excluded.body
"""
INSERT_CONFIG = """
insert into config_versions (env, version, applied_at, applied_by, checksum, source, policy)
values ($1, $2, $3, $4, $5, $6, $7::jsonb)
on conflict (env, version) do nothing
"""


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


def _int(value) -> int | None:
    return int(value) if isinstance(value, int | float) else None


async def write_batch(pool: asyncpg.Pool, events: list[dict]) -> None:
    """Write a batch of events in one transaction; replays of the same event are no-ops."""
    event_rows, invocation_rows, config_rows = [], [], []
    for e in events:
        body = orjson.dumps(e).decode()
        ts = _ts(e["ts"])
        event_rows.append(
            (
                e["env"],
                e["event_id"],
                e["kind"],
                ts,
                e.get("service"),
                e.get("invocation_id"),
                e.get("trace_id"),
                body,
            )
        )
        if e["kind"] == "invocation":
            error = e.get("error") or {}
            invocation_rows.append(
                (
                    e["env"],
                    e["invocation_id"],
                    ts,
                    e.get("workflow"),
                    e.get("session_id"),
                    e.get("agent"),
                    e.get("status"),
                    e.get("provider"),
                    e.get("model"),
                    _int(e.get("prompt_tokens")),
                    _int(e.get("completion_tokens")),
                    e.get("latency_ms"),
                    error.get("code"),
                    e.get("trace_id"),
                    e.get("config_version"),
                    body,
                )
            )
        elif e["kind"] == "config" and e.get("action") == "applied":
            config_rows.append(
                (
                    e["env"],
                    int(e["version"]),
                    _ts(e["applied_at"]),
                    e.get("applied_by"),
                    e["checksum"],
                    e.get("source"),
                    orjson.dumps(e["policy"]).decode(),
                )
            )
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(INSERT_EVENT, event_rows)
        if invocation_rows:
            await conn.executemany(UPSERT_INVOCATION, invocation_rows)
        if config_rows:
            await conn.executemany(INSERT_CONFIG, config_rows)


async def read_trace(pool: asyncpg.Pool, env: str, invocation_id: str) -> tuple[dict | None, list[dict]]:
    """The invocation's summary row and every event that names it, oldest first."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "select body from invocations where env = $1 and invocation_id = $2", env, invocation_id
        )
        events = await conn.fetch(
            "select body from events where env = $1 and invocation_id = $2 order by ts, kind",
            env,
            invocation_id,
        )
    return (orjson.loads(row["body"]) if row else None), [orjson.loads(r["body"]) for r in events]


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


async def prune(pool: asyncpg.Pool, older_than_days: int, batch: int = 5000) -> int:
    """Delete rows past retention in small batches so the log never locks for long."""
    total = 0
    for table in ("events", "invocations"):
        while True:
            status = await pool.execute(
                f"delete from {table} where ctid in (select ctid from {table} "
                f"where ts < now() - make_interval(days => $1) limit $2)",
                older_than_days,
                batch,
            )
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < batch:
                break
    return total

"""How fast `sbctl stats` and `sbctl invocations` answer on a large audit log.

Fills a throw-away environment with N invocation rows spread over the last hour (plus one
rate-limit and one breach event per 50 invocations) through the real partitioned tables, then
times the recorder's queries (the code `sbctl` reaches through NATS) against a bare count(*) over
the same window (the least any query over those rows costs), and drops the environment.

    python bench/audit_queries.py                # 1,000,000 rows
    python bench/audit_queries.py --rows 20000   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402

from services.recorder import queries  # noqa: E402
from shared.settings import Settings  # noqa: E402

FILL_INVOCATIONS = """
insert into invocations (env, invocation_id, ts, workflow, session_id, agent, status, provider, model,
                         prompt_tokens, completion_tokens, latency_ms, trace_id, config_version, body,
                         cost_usd)
select $1, 'inv-' || g, $2::timestamptz - (g % 3600) * interval '1 second', 'wf-' || (g % 8),
       's-' || (g % 5000), 'agent-' || (g % 40),
       case when g % 100 < 90 then 'success' when g % 100 < 97 then 'fallback'
            when g % 100 < 99 then 'budget_exceeded' else 'error' end,
       'openai-sim', 'gpt-sim-large', 200 + g % 300, 50 + g % 200, 5 + (g % 997) * 0.37,
       md5(g::text), '7',
       jsonb_build_object('invocation_id', 'inv-' || g, 'workflow', 'wf-' || (g % 8),
                          'attempts', jsonb_build_array(jsonb_build_object('tier', 0, 'outcome', 'ok',
                                                        'provider', 'openai-sim', 'latency_ms', 12.5)),
                          'metadata', jsonb_build_object('ticket', 'T-' || g, 'channel', 'email'),
                          'status', 'success', 'trace_id', md5(g::text)),
       (200 + g % 300) * 2.5e-6 + (50 + g % 200) * 1e-5
from generate_series($3::int, $4::int) g
"""
FILL_EVENTS = """
insert into events (env, event_id, kind, ts, service, invocation_id, body)
select $1, 'ev-' || g, case when g % 2 = 0 then 'rate_limit' else 'budget_breach' end,
       $2::timestamptz - (g % 3600) * interval '1 second', 'router', 'inv-' || g,
       jsonb_build_object('workflow', 'wf-' || (g % 8), 'provider', 'openai-sim')
from generate_series(1, $3::int) g
"""


async def timed(label: str, repeat: int, call) -> dict:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = await call()
        runs.append((time.perf_counter() - started) * 1000)
    row = {"query": label, "median_ms": statistics.median(runs), "max_ms": max(runs), "rows": len(result)}
    print(
        f"  {label:<58} median {row['median_ms']:8.1f} ms   max {row['max_ms']:8.1f} ms   rows {row['rows']}"
    )
    return row


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    env = f"bench{uuid.uuid4().hex[:8]}"
    pool = await asyncpg.create_pool(Settings().database_url, min_size=1, max_size=2)
    now = datetime.now(UTC)
    try:
        await pool.execute(
            "select audit_ensure_partitions($1, $2, $3)", env, (now - timedelta(days=1)).date(), now.date()
        )
        started = time.perf_counter()
        chunk = 100_000
        for first in range(1, args.rows + 1, chunk):
            await pool.execute(FILL_INVOCATIONS, env, now, first, min(first + chunk - 1, args.rows))
        await pool.execute(FILL_EVENTS, env, now, args.rows // 50)
        for table in ("events", "invocations"):
            await pool.execute(f'analyze "{await pool.fetchval("select audit_table($1, $2)", table, env)}"')
        print(
            f"env {env}: {args.rows:,} invocations in the last hour, "
            f"filled in {time.perf_counter() - started:.1f} s"
        )
        hour = now - timedelta(hours=1)
        q = queries

        async def scan() -> list:  # the floor: touching every row of the window once
            return await pool.fetch("select count(*) from invocations where env = $1 and ts >= $2", env, hour)

        await timed("baseline: select count(*) over the same window", args.repeat, scan)
        await timed(
            "stats --since 1h (all workflows)", args.repeat, lambda: q.stats(pool, q.Window(env, hour))
        )
        await timed(
            "stats --since 1h --workflow wf-3",
            args.repeat,
            lambda: q.stats(pool, q.Window(env, hour, workflow="wf-3")),
        )
        await timed("invocations --since 1h", args.repeat, lambda: q.invocations(pool, env, hour))
        await timed(
            "invocations --since 1h --status error --limit 1000",
            args.repeat,
            lambda: q.invocations(pool, env, hour, status="error", limit=1000),
        )
        await timed(
            "invocations --since 1h --workflow wf-3 --agent agent-11",
            args.repeat,
            lambda: q.invocations(pool, env, hour, workflow="wf-3", agent="agent-11"),
        )
    finally:
        await pool.execute("select audit_drop_env($1)", env)
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main())

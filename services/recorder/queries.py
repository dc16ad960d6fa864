"""The recorder's read side for operators: per-workflow stats and invocation listings over a
recent window, straight from the partitioned audit tables (the window prunes to its days)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.contracts import AgentSpend, AgentStats, InvocationRow, Status, WorkflowStats

TOP_AGENTS = 5
# One pass over the window: sums per (workflow, status, agent), and per workflow a histogram of
# latency in buckets 0.5% wide (log scale) from which the percentiles are read, within 0.25%.
# Sorting a million latencies for exact percentiles took longer than the whole pass.
BUCKETS_PER_E = 200
TOTALS_SQL = f"""
select workflow, status, agent, round(ln(greatest(latency_ms, 0.001)) * {BUCKETS_PER_E})::int as bucket,
       grouping(status) as latency_row, count(*) as n,
       coalesce(sum(prompt_tokens), 0) as prompt_tokens,
       coalesce(sum(completion_tokens), 0) as completion_tokens, coalesce(sum(cost_usd), 0) as spend
from invocations where {{where}}
group by grouping sets ((workflow, status, agent), (workflow, bucket))
"""
# Fallback events carry why the earlier tier gave way: `source` when it was skipped (blocked,
# drill, cooldown, circuit_open, local_quota), else the failed call's outcome.
EVENTS_SQL = """
select body->>'workflow' as workflow, kind,
       case when kind = 'fallback' then coalesce(body->>'source', body->>'outcome') end as reason,
       count(*) as n
from events where {where} group by 1, 2, 3
"""
AGENTS_SQL = """
select workflow, agent, count(*) as n, count(distinct session_id) as sessions,
       coalesce(sum(cost_usd), 0) as spend,
       coalesce(sum(prompt_tokens), 0) + coalesce(sum(completion_tokens), 0) as tokens,
       percentile_cont(0.5) within group (order by (body->>'max_tokens')::int) as max_tokens_p50,
       max((body->>'max_tokens')::int) as max_tokens_max, max(ts) as last_ts
from invocations where {where}
group by 1, 2 order by spend desc, n desc limit {limit}
"""
TOP_AGENT_ROWS = 20
LIST_COLUMNS = (
    "invocation_id, ts, workflow, agent, session_id, status, provider, model, prompt_tokens, "
    "completion_tokens, latency_ms, cost_usd, error_code, trace_id"
)


@dataclass(frozen=True)
class Window:
    """Which invocations a question is about: an environment's, between `since` and `until`
    (None: now), of one workflow, that ended with one of `statuses` (None: any)."""

    env: str
    since: datetime
    until: datetime | None = None
    workflow: str | None = None
    statuses: list[Status] | None = None

    def where(self, *, events: bool = False) -> tuple[str, list]:
        """The SQL condition and its arguments ($1...), for the invocations or the events table."""
        clauses, args = ["env = $1", "ts >= $2"], [self.env, self.since]

        def add(template: str, value) -> None:
            args.append(value)
            clauses.append(template.format(f"${len(args)}"))

        if self.until is not None:
            add("ts < {}", self.until)
        if self.workflow is not None:
            add("body->>'workflow' = {}" if events else "workflow = {}", self.workflow)
        if self.statuses is not None and not events:
            add("status = any({}::text[])", [s.value for s in self.statuses])
        return " and ".join(clauses), args


async def stats(pool: asyncpg.Pool, window: Window) -> list[WorkflowStats]:
    """Per workflow: invocations by status, latency percentiles, tokens, spend, fallback rate
    and its reasons, budget breaches, rate-limit events and the agents that spent most."""
    inv_where, inv_args = window.where()
    ev_where, ev_args = window.where(events=True)
    ev_args.append(["budget_breach", "rate_limit", "fallback"])
    ev_where += f" and kind = any(${len(ev_args)}::text[])"
    out: dict[str | None, WorkflowStats] = {}

    def entry(name: str | None) -> WorkflowStats:
        return out.setdefault(name, WorkflowStats(workflow=name))

    # events before invocations, the order partition maintenance locks them in: no deadlock
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("set local work_mem = '64MB'")  # both hash tables stay in memory
        counted = await conn.fetch(EVENTS_SQL.format(where=ev_where), *ev_args)
        totals = await conn.fetch(TOTALS_SQL.format(where=inv_where), *inv_args)
    agents: dict[tuple, AgentSpend] = {}
    histograms: dict[str | None, dict[int, int]] = {}
    for r in totals:
        if r["latency_row"]:
            if r["bucket"] is not None:
                histograms.setdefault(r["workflow"], {})[r["bucket"]] = r["n"]
            continue
        w = entry(r["workflow"])
        w.invocations += r["n"]
        status = r["status"] or "unknown"
        w.by_status[status] = w.by_status.get(status, 0) + r["n"]
        w.prompt_tokens += r["prompt_tokens"]
        w.completion_tokens += r["completion_tokens"]
        w.spend_usd += r["spend"]
        agent = agents.setdefault((r["workflow"], r["agent"]), AgentSpend(agent=r["agent"]))
        agent.invocations += r["n"]
        agent.spend_usd += r["spend"]
    for name, histogram in histograms.items():
        entry(name).latency_ms = {f"p{q}": percentile(histogram, q / 100) for q in (50, 95, 99)}
    for r in counted:
        if window.statuses is not None and r["workflow"] not in out:
            continue  # only events of invocations that ended otherwise
        w = entry(r["workflow"])
        if r["kind"] == "budget_breach":
            w.budget_breaches = r["n"]
        elif r["kind"] == "rate_limit":
            w.rate_limit_events = r["n"]
        else:
            w.fallbacks_by_reason[r["reason"] or "unknown"] = r["n"]
    for (name, _), agent in sorted(agents.items(), key=lambda kv: (-kv[1].spend_usd, -kv[1].invocations)):
        top = out[name].top_agents
        if len(top) < TOP_AGENTS:
            agent.spend_usd = round(agent.spend_usd, 6)
            top.append(agent)
    for w in out.values():
        w.spend_usd = round(w.spend_usd, 6)
        w.fallback_rate = round(w.by_status.get("fallback", 0) / w.invocations, 4) if w.invocations else 0.0
    return sorted(out.values(), key=lambda w: w.workflow or "")


def percentile(histogram: dict[int, int], q: float) -> float:
    """The q-quantile (interpolated like percentile_cont) of a log-bucketed latency histogram."""
    buckets = sorted(histogram.items())
    rank = q * (sum(histogram.values()) - 1)

    def value_at(k: int) -> float:
        seen = 0
        for bucket, n in buckets:
            seen += n
            if k < seen:
                return math.exp(bucket / BUCKETS_PER_E)
        return math.exp(buckets[-1][0] / BUCKETS_PER_E)

    low, high = value_at(math.floor(rank)), value_at(math.ceil(rank))
    return round(low + (high - low) * (rank - math.floor(rank)), 3)


async def invocations(
    pool: asyncpg.Pool,
    env: str,
    since: datetime,
    *,
    workflow: str | None = None,
    status: str | None = None,
    agent: str | None = None,
    limit: int = 50,
) -> list[InvocationRow]:
    """The newest invocations of the window matching every filter given."""
    where, args = ["env = $1", "ts >= $2"], [env, since]
    for column, value in (("workflow", workflow), ("status", status), ("agent", agent)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    args.append(limit)
    sql = (
        f"select {LIST_COLUMNS} from invocations where {' and '.join(where)} "
        f"order by ts desc limit ${len(args)}"
    )
    return [InvocationRow(**{**r, "ts": r["ts"].timestamp()}) for r in await pool.fetch(sql, *args)]


async def agents(pool: asyncpg.Pool, window: Window) -> list[AgentStats]:
    """The agents that spent most in the window (then by invocations), per workflow: how many
    sessions they used and what max_tokens they asked for."""
    where, args = window.where()
    args.append(TOP_AGENT_ROWS)
    rows = await pool.fetch(AGENTS_SQL.format(where=where, limit=f"${len(args)}"), *args)
    return [
        AgentStats(
            workflow=r["workflow"],
            agent=r["agent"],
            invocations=r["n"],
            sessions=r["sessions"],
            spend_usd=round(r["spend"], 6),
            tokens=r["tokens"],
            max_tokens_p50=r["max_tokens_p50"],
            max_tokens_max=r["max_tokens_max"],
            last_ts=r["last_ts"].timestamp() if r["last_ts"] else None,
        )
        for r in rows
    ]

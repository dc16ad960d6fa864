"""sbctl stats, sbctl latency and sbctl invocations: what the audit log says about the recent
past. Every answer says how far the audit log is behind, when it is: invocations answered in
that time are not in it yet."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pydantic import BaseModel

from shared import names
from shared.bus import Bus
from shared.contracts import (
    AuditLag,
    InvocationsReply,
    InvocationsRequest,
    StatsReply,
    StatsRequest,
    Status,
    WorkflowStats,
)
from shared.sbctl.output import emit_json, fail, table
from switchboard_sdk import errors

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """`90s`, `15m`, `1h`, `7d` as seconds (argparse type)."""
    match = DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 1h, 7d)")
    return float(match.group(1)) * UNIT_S[match.group(2)]


def limit(text: str) -> int:
    """A row count between 1 and 10000 (argparse type)."""
    value = int(text)
    if not 1 <= value <= 10_000:
        raise ValueError(f"--limit must be between 1 and 10000, got {value}")
    return value


async def _ask(args, settings, subject: str, request: BaseModel, reply_type: type):
    bus = await Bus.connect(settings.nats_url, env=args.env, service="sbctl")
    try:
        reply = await bus.request(subject, request, reply_type, timeout=args.timeout)
    except errors.SwitchboardError as exc:
        fail(f"the recorder did not answer: {exc.message}", code=exc.code, as_json=args.json)
    finally:
        await bus.drain(5)
    if reply.error:
        fail(reply.error.message, code=reply.error.code, as_json=args.json)
    return reply


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


LAG_NOTICE_S = 2.0  # an audit log less behind than this is up to date for anyone reading it


def lag_line(lag: AuditLag | None) -> str:
    """How current the audit log is, in words."""
    if lag is None:
        return "audit log: lag unknown (JetStream did not say)"
    if not lag.pending_events:
        return "audit log: up to date"
    if lag.oldest_s < LAG_NOTICE_S:  # live traffic always has a few events on their way
        return f"audit log: up to date ({lag.pending_events} events on their way, under {LAG_NOTICE_S:g} s)"
    return (
        f"audit log: {lag.oldest_s:.0f} s behind ({lag.pending_events} events not yet recorded); "
        "invocations answered since are not counted here yet"
    )


# Why a tier gave way: these mean an operator's mitigation is working, not that something fails.
MITIGATION = ("blocked", "drill")


def _fallback_reasons(w: WorkflowStats) -> str:
    """`2 failing (server_error 2), 8 mitigated (blocked 8)`; `-` without fallbacks."""
    failing = {r: n for r, n in w.fallbacks_by_reason.items() if r not in MITIGATION}
    mitigated = {r: n for r, n in w.fallbacks_by_reason.items() if r in MITIGATION}
    parts = []
    for label, group in (("failing", failing), ("mitigated", mitigated)):
        if group:
            detail = ", ".join(f"{r} {n}" for r, n in sorted(group.items()))
            parts.append(f"{sum(group.values())} {label} ({detail})")
    return "; ".join(parts) or "-"


async def stats(args, settings) -> int:
    by_agent = args.by == "agent"
    request = StatsRequest(since_s=args.since, workflow=args.workflow, by_agent=by_agent)
    reply: StatsReply = await _ask(args, settings, names.recorder_stats(args.env), request, StatsReply)
    if args.json:
        emit_json(reply.model_dump(mode="json"))
        return 0
    since = datetime.fromtimestamp(reply.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"env {args.env}  since {since}")
    print(lag_line(reply.audit_lag))
    if not reply.workflows:
        print("no invocations recorded in this window")
        return 0
    if by_agent:
        _print_agents(reply)
        return 0
    statuses = sorted({s for w in reply.workflows for s in w.by_status})
    rows = []
    for w in reply.workflows:
        row = {
            "workflow": w.workflow,
            "invocations": w.invocations,
            **{s: w.by_status.get(s, 0) for s in statuses},
            "p50_ms": _ms(w.latency_ms.get("p50")),
            "p95_ms": _ms(w.latency_ms.get("p95")),
            "p99_ms": _ms(w.latency_ms.get("p99")),
            "tokens": w.prompt_tokens + w.completion_tokens,
            "spend_usd": f"{w.spend_usd:.4f}",
            "fallback_rate": f"{w.fallback_rate:.1%}",
            "breaches": w.budget_breaches,
            "rate_limits": w.rate_limit_events,
        }
        rows.append(row)
    print(table(rows, list(rows[0])))
    reasons = [{"workflow": w.workflow, "fallbacks": _fallback_reasons(w)} for w in reply.workflows]
    reasons = [r for r in reasons if r["fallbacks"] != "-"]
    if reasons:
        print("\nfallbacks by reason (mitigated: an operator block or a drill routes around a provider)")
        print(table(reasons, ["workflow", "fallbacks"]))
    agents = [
        {
            "workflow": w.workflow,
            "agent": a.agent,
            "invocations": a.invocations,
            "spend_usd": f"{a.spend_usd:.4f}",
        }
        for w in reply.workflows
        for a in w.top_agents
    ]
    if agents:
        print("\ntop agents by spend (sbctl stats --by agent: their sessions and max_tokens)")
        print(table(agents, ["workflow", "agent", "invocations", "spend_usd"]))
    return 0


def _print_agents(reply: StatsReply) -> None:
    rows = [
        {
            "workflow": a.workflow,
            "agent": a.agent,
            "invocations": a.invocations,
            "sessions": a.sessions,
            "spend_usd": f"{a.spend_usd:.4f}",
            "tokens": a.tokens,
            "max_tokens_p50": None if a.max_tokens_p50 is None else f"{a.max_tokens_p50:.0f}",
            "max_tokens_max": a.max_tokens_max,
            "last_seen": datetime.fromtimestamp(a.last_ts, UTC).strftime("%H:%M:%S") if a.last_ts else None,
        }
        for a in reply.agents
    ]
    print("agents by spend; MAX_TOKENS is what the caller asked for (- when it left it to the ceiling)")
    print(table(rows, list(rows[0])))


ANSWERED = [Status.SUCCESS, Status.FALLBACK]


async def latency(args, settings) -> int:
    """Latency of answered invocations per workflow: the last `--last` against the `--before`
    that preceded it, from the audit log."""
    subject = names.recorder_stats(args.env)
    now = StatsRequest(since_s=args.last, workflow=args.workflow, statuses=ANSWERED)
    before = StatsRequest(since_s=args.before, until_s=args.last, workflow=args.workflow, statuses=ANSWERED)
    recent: StatsReply = await _ask(args, settings, subject, now, StatsReply)
    earlier: StatsReply = await _ask(args, settings, subject, before, StatsReply)
    old = {w.workflow: w for w in earlier.workflows}
    rows = []
    for name in sorted({w.workflow for w in recent.workflows} | set(old), key=lambda n: n or ""):
        w = next((x for x in recent.workflows if x.workflow == name), WorkflowStats(workflow=name))
        b = old.get(name, WorkflowStats(workflow=name))
        p99_now, p99_before = w.latency_ms.get("p99"), b.latency_ms.get("p99")
        rows.append(
            {
                "workflow": name,
                "answered": w.invocations,
                "p50_ms": _ms(w.latency_ms.get("p50")),
                "p95_ms": _ms(w.latency_ms.get("p95")),
                "p99_ms": _ms(p99_now),
                "answered_before": b.invocations,
                "p50_before": _ms(b.latency_ms.get("p50")),
                "p95_before": _ms(b.latency_ms.get("p95")),
                "p99_before": _ms(p99_before),
                "p99_change": f"{p99_now / p99_before:.1f}x" if p99_now and p99_before else "-",
            }
        )
    if args.json:
        emit_json(
            {"env": args.env, "last_s": args.last, "before_s": args.before, "workflows": rows}
            | {"audit_lag": recent.audit_lag.model_dump() if recent.audit_lag else None}
        )
        return 0
    print(
        f"env {args.env}  latency of answered invocations (success, fallback) inside the gateway:"
        f" last {_span(args.last)} against the {_span(args.before)} before"
    )
    print(lag_line(recent.audit_lag))
    if not rows:
        print("no answered invocations recorded in either window")
        return 0
    print(table(rows, list(rows[0])))
    return 0


def _span(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= UNIT_S[unit] and seconds % UNIT_S[unit] == 0:
            return f"{seconds / UNIT_S[unit]:g}{unit}"
    return f"{seconds:g}s"


async def invocations(args, settings) -> int:
    request = InvocationsRequest(
        since_s=args.since, workflow=args.workflow, status=args.status, agent=args.agent, limit=args.limit
    )
    subject = names.recorder_invocations(args.env)
    reply: InvocationsReply = await _ask(args, settings, subject, request, InvocationsReply)
    if args.json:
        emit_json(reply.model_dump(mode="json"))
        return 0
    print(lag_line(reply.audit_lag))
    rows = [
        {
            "time": datetime.fromtimestamp(r.ts, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "invocation": r.invocation_id,
            "workflow": r.workflow,
            "agent": r.agent,
            "session": r.session_id,
            "status": r.status,
            "via": f"{r.provider}/{r.model}" if r.provider else None,
            "ms": _ms(r.latency_ms),
            "tokens": None
            if r.prompt_tokens is None
            else (r.prompt_tokens or 0) + (r.completion_tokens or 0),
            "usd": None if r.cost_usd is None else f"{r.cost_usd:.6f}",
            "error": r.error_code,
        }
        for r in reply.invocations
    ]
    print(
        table(
            rows,
            [
                "time",
                "invocation",
                "workflow",
                "agent",
                "session",
                "status",
                "via",
                "ms",
                "tokens",
                "usd",
                "error",
            ],
        )
    )
    return 0

"""sbctl stats and sbctl invocations: what the audit log says about the recent past."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pydantic import BaseModel

from shared import names
from shared.bus import Bus
from shared.contracts import InvocationsReply, InvocationsRequest, StatsReply, StatsRequest
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


async def stats(args, settings) -> int:
    request = StatsRequest(since_s=args.since, workflow=args.workflow)
    reply: StatsReply = await _ask(args, settings, names.recorder_stats(args.env), request, StatsReply)
    if args.json:
        emit_json(reply.model_dump(mode="json"))
        return 0
    since = datetime.fromtimestamp(reply.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"env {args.env}  since {since}")
    if not reply.workflows:
        print("no invocations recorded in this window")
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
        print("\ntop agents by spend")
        print(table(agents, ["workflow", "agent", "invocations", "spend_usd"]))
    return 0


async def invocations(args, settings) -> int:
    request = InvocationsRequest(
        since_s=args.since, workflow=args.workflow, status=args.status, agent=args.agent, limit=args.limit
    )
    subject = names.recorder_invocations(args.env)
    reply: InvocationsReply = await _ask(args, settings, subject, request, InvocationsReply)
    if args.json:
        emit_json(reply.model_dump(mode="json"))
        return 0
    rows = [
        {
            "time": datetime.fromtimestamp(r.ts, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "invocation": r.invocation_id,
            "workflow": r.workflow,
            "agent": r.agent,
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
            rows, ["time", "invocation", "workflow", "agent", "status", "via", "ms", "tokens", "usd", "error"]
        )
    )
    return 0

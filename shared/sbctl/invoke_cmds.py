"""sbctl invoke and sbctl trace: one invocation by hand, and what the audit log holds of one."""

from __future__ import annotations

from datetime import UTC, datetime

from shared import errors, names
from shared.bus import Bus
from shared.contracts import TraceReply, TraceRequest
from shared.sbctl.output import emit_json, fail, table
from shared.sdk import Client


def _metadata(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--meta takes key=value, got {pair!r}")
        out[key] = value
    return out


async def invoke(args, settings) -> int:
    try:
        async with Client(settings.nats_url, env=args.env, agent="sbctl") as sb:
            result = await sb.invoke(
                args.workflow,
                args.text,
                session_id=args.session,
                max_tokens=args.max_tokens,
                metadata=_metadata(args.meta),
                timeout=args.timeout,
            )
    except errors.SwitchboardError as exc:
        fail(exc.message, code=exc.code, as_json=args.json)
    if args.json:
        emit_json(result.model_dump(mode="json", exclude_none=True))
    else:
        print(
            f"{result.status.value}  {result.invocation_id}  via {result.provider}/{result.model}  "
            f"{result.latency_ms:.1f} ms  "
            f"tokens {result.usage.prompt_tokens}+{result.usage.completion_tokens}"
        )
        if result.output:
            print(result.output)
        if result.error:
            print(f"error [{result.error.code}]: {result.error.message}")
    return 0 if result.status.value in ("success", "fallback") else 2


async def trace(args, settings) -> int:
    bus = await Bus.connect(settings.nats_url, env=args.env, service="sbctl")
    try:
        reply = await bus.request(
            names.recorder_trace(args.env),
            TraceRequest(invocation_id=args.invocation_id),
            TraceReply,
            timeout=args.timeout,
        )
    except errors.SwitchboardError as exc:
        fail(f"the recorder did not answer: {exc.message}", code=exc.code, as_json=args.json)
    finally:
        await bus.drain(5)
    if reply.error:
        fail(reply.error.message, code=reply.error.code, as_json=args.json)
    if not reply.found:
        fail(
            f"no invocation {args.invocation_id} recorded in env {args.env}",
            code="not_found",
            as_json=args.json,
        )
    if args.json:
        emit_json(reply.model_dump(mode="json"))
        return 0
    inv = reply.invocation or {}
    if inv:
        print(
            f"invocation {inv['invocation_id']}  workflow {inv.get('workflow')}  status {inv.get('status')}"
        )
        print(
            f"  provider {inv.get('provider')}/{inv.get('model')}  latency {inv.get('latency_ms')} ms  "
            f"tokens {inv.get('prompt_tokens')}+{inv.get('completion_tokens')}"
        )
        print(
            f"  session {inv.get('session_id')}  agent {inv.get('agent')}  "
            f"config {inv.get('config_version')}  trace {inv.get('trace_id')}"
        )
        if inv.get("error"):
            print(f"  error [{inv['error'].get('code')}]: {inv['error'].get('message')}")
    rows = [
        {
            "time": datetime.fromtimestamp(e["ts"], UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            "kind": e["kind"],
            "service": e.get("service"),
            "detail": _detail(e),
        }
        for e in reply.events
    ]
    print(table(rows, ["time", "kind", "service", "detail"]))
    return 0


def _detail(e: dict) -> str:
    kind = e["kind"]
    if kind == "attempt":
        where = f"tier {e.get('tier')} {e.get('provider')}/{e.get('model')}"
        return f"{where}: {e.get('outcome')} ({e.get('latency_ms')} ms)"
    if kind == "fallback":
        src, dst = (
            f"{e.get('from_provider')}/{e.get('from_model')}",
            f"{e.get('to_provider')}/{e.get('to_model')}",
        )
        return f"{src} -> {dst}: {e.get('reason')}"
    if kind == "budget_breach":
        return f"{e.get('scope')}: {e.get('message')}"
    if kind == "invocation":
        return f"{e.get('status')} via {e.get('provider')}/{e.get('model')}"
    return ""

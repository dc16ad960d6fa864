"""sbctl invoke and sbctl trace: one invocation by hand, and what the audit log holds of one."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from shared import names
from shared.contracts import (
    AttemptEvent,
    AttemptStartedEvent,
    BudgetBreachEvent,
    BudgetUnavailableEvent,
    CircuitEvent,
    ConfigEvent,
    Event,
    FallbackEvent,
    InvocationEvent,
    PassthroughEvent,
    ProbeEvent,
    ProviderBlockEvent,
    RateLimitEvent,
    TraceReply,
    TraceRequest,
)
from shared.sbctl.context import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, connect
from shared.sbctl.output import emit_json, fail, table
from switchboard_sdk import Client, errors


def _metadata(pairs: list[str]) -> dict:
    """KEY=VALUE pairs; a value that reads as a number is one (review rules compare numbers)."""
    out: dict[str, str | int | float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--meta takes key=value, got {pair!r}")
        if re.fullmatch(r"-?\d+", value):
            out[key] = int(value)
        elif re.fullmatch(r"-?\d+\.\d+", value):
            out[key] = float(value)
        else:
            out[key] = value
    return out


async def invoke(args, settings) -> int:
    try:
        # The operator's own subject (not an agent's): "sbctl" is a label, not an identity.
        async with Client(settings.nats_url, env=args.env) as sb:
            result = await sb.invoke(
                args.workflow,
                args.text,
                agent="sbctl",
                session_id=args.session,
                max_tokens=args.max_tokens,
                metadata=_metadata(args.meta),
                timeout=args.timeout,
                wait_for_review=args.wait_for_review,
            )
    except errors.Unavailable as exc:  # the documented exit code 3, as for every command
        fail(exc.message, code=exc.code, as_json=args.json, exit_code=EXIT_UNAVAILABLE)
    except errors.SwitchboardError as exc:
        fail(exc.message, code=exc.code, as_json=args.json, exit_code=EXIT_FAILED)
    if args.json:
        emit_json(result.model_dump(mode="json", exclude_none=True))
    else:
        print(
            f"{result.status.value}  {result.invocation_id}  via {result.provider}/{result.model}  "
            f"{result.latency_ms:.1f} ms  "
            f"tokens {result.usage.prompt_tokens}+{result.usage.completion_tokens}"
        )
        if result.review_id and result.status.value == "pending_review":
            print(f"held for review {result.review_id}; `sbctl invoke --wait-for-review S` waits for it")
        if result.output:
            print(result.output)
        if result.error:
            print(f"error [{result.error.code}]: {result.error.message}")
    return EXIT_OK if result.status.value in ("success", "fallback") else EXIT_FAILED


async def trace(args, settings) -> int:
    bus = await connect(settings)
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
        lag = reply.audit_lag
        if lag is not None and lag.pending_events:
            fail(
                f"{args.invocation_id} not recorded yet (audit log {lag.oldest_s:.0f} s behind, "
                f"{lag.pending_events} events waiting): if it was answered in that time its trail "
                "is still on its way; try again when the lag is gone",
                code=errors.NotRecordedYet.code,
                as_json=args.json,
            )
        fail(
            f"no invocation {args.invocation_id} recorded in env {args.env} (the audit log is up to date)",
            code=errors.NotFound.code,
            as_json=args.json,
        )
    if args.json:
        emit_json(reply.model_dump(mode="json"))
        return 0
    inv = reply.invocation
    if inv is not None:
        print(f"invocation {inv.invocation_id}  workflow {inv.workflow}  status {inv.status.value}")
        print(
            f"  provider {inv.provider}/{inv.model}  latency {inv.latency_ms} ms  "
            f"tokens {inv.prompt_tokens}+{inv.completion_tokens}  "
            f"asked max_tokens {inv.max_tokens}, prompt estimate {inv.estimated_prompt_tokens}"
        )
        print(
            f"  session {inv.session_id}  agent {inv.agent}  "
            f"config {inv.config_version}  trace {inv.trace_id}"
        )
        if inv.error:
            print(f"  error [{inv.error.code}]: {inv.error.message}")
    finished = {e.attempt_id for e in reply.events if isinstance(e, AttemptEvent) and e.attempt_id}
    rows = [
        {
            "time": datetime.fromtimestamp(e.ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            "kind": e.kind.value,
            "service": e.service,
            "detail": _detail(e, finished),
        }
        for e in reply.events
    ]
    print(table(rows, ["time", "kind", "service", "detail"]))
    return 0


def _detail(e: Event, finished: set[str]) -> str:
    """One line on what an event says, per kind (`finished`: the attempt ids that ended)."""
    match e:
        case InvocationEvent():
            return f"{e.status.value} via {e.provider}/{e.model}"
        case AttemptEvent():
            return f"tier {e.tier} {e.provider}/{e.model}: {e.outcome.value} ({e.latency_ms} ms)"
        case AttemptStartedEvent():
            end = "" if e.attempt_id in finished else ", never finished (the gateway stopped during the call)"
            return f"tier {e.tier} {e.provider}/{e.model}: call {e.attempt_id} started{end}"
        case FallbackEvent():
            return f"{e.from_provider}/{e.from_model} -> {e.to_provider}/{e.to_model}: {e.reason}"
        case RateLimitEvent():
            return f"{e.provider}/{e.model}: {e.source.value}"
        case CircuitEvent():
            return f"{e.provider}: circuit {e.state} after {e.failures} failures for {e.open_s:g}s"
        case BudgetBreachEvent():
            return f"{e.scope.value}: {e.message}"
        case BudgetUnavailableEvent():
            return f"{e.mode}: {e.reason}"
        case ConfigEvent():
            return f"version {e.version} {e.action} by {e.applied_by}"
        case ProviderBlockEvent():
            return f"{e.provider} {'blocked' if e.blocked else 'unblocked'}: {e.reason}"
        case ProbeEvent():
            return f"probe of {e.provider}/{e.model} by {e.by}: {e.outcome.value} ({e.latency_ms} ms)"
        case PassthroughEvent():
            return f"UNENFORCED {e.status.value} via {e.provider}/{e.model} by agent {e.agent}: {e.reason}"
    return ""

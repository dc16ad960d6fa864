"""sbctl provider status|block|unblock|probe and sbctl quotas: the router's view of providers,
the lever to route around one at once, and the probe that shows whether it has recovered."""

from __future__ import annotations

from pydantic import ValidationError

from shared import names
from shared.contracts import (
    AttemptOutcome,
    BlockReply,
    BlockRequest,
    ProbeReply,
    ProbeRequest,
    ProviderStatusReply,
    ProviderStatusRequest,
)
from shared.sbctl.context import EXIT_USAGE, connect, from_options, operator
from shared.sbctl.output import emit_json, fail, table
from switchboard_sdk import errors


async def _ask(
    settings, env: str, subject: str, body, reply_model, as_json: bool, timeout=5.0, who="the router"
):
    bus = await connect(settings)
    try:
        reply = await bus.request(subject, body, reply_model, timeout=timeout)
    except errors.SwitchboardError as exc:
        fail(f"{who} did not answer: {exc.message}", code=exc.code, as_json=as_json)
    finally:
        await bus.drain(5)
    if reply.error:
        fail(reply.error.message, code=reply.error.code, as_json=as_json)
    return reply


async def fetch_status(settings, env: str, provider: str | None, as_json: bool) -> ProviderStatusReply:
    return await _ask(
        settings,
        env,
        names.router_status(env),
        ProviderStatusRequest(provider=provider),
        ProviderStatusReply,
        as_json,
    )


def _of(used: int, limit: int | None) -> str:
    return f"{used}/{limit}" if limit else f"{used}/-"


async def status(args, settings) -> int:
    reply = await fetch_status(settings, args.env, args.provider, args.json)
    if args.json:
        emit_json(reply.model_dump(mode="json"))
        return 0
    rows = []
    for p in reply.providers:
        circuit = f"open, {p.circuit_open_ms / 1000:.1f}s left" if p.circuit_open_ms else "closed"
        rows.append(
            {
                "provider": p.provider,
                "model": "*",
                "state": f"BLOCKED ({p.blocked})" if p.blocked else "ok",
                "circuit": f"{circuit}, {p.consecutive_failures} failures",
                "cooldown": "-",
                "requests/min": _of(p.requests_this_minute, p.rpm),
                "tokens/min": _of(p.tokens_this_minute, p.tpm),
            }
        )
        for m in p.models:
            rows.append(
                {
                    "provider": "",
                    "model": m.model,
                    "state": "",
                    "circuit": "",
                    "cooldown": f"{m.cooldown_ms / 1000:.1f}s left" if m.cooldown_ms else "-",
                    "requests/min": _of(m.requests_this_minute, m.rpm),
                    "tokens/min": _of(m.tokens_this_minute, m.tpm),
                }
            )
    print(f"env {args.env}, policy version {reply.config_version}")
    print(table(rows, ["provider", "model", "state", "circuit", "cooldown", "requests/min", "tokens/min"]))
    return 0


async def quotas(args, settings) -> int:
    reply = await fetch_status(settings, args.env, None, args.json)
    rows = []
    for p in reply.providers:
        scopes = [(p.provider, p)] + [(f"{p.provider}/{m.model}", m) for m in p.models]
        for scope, s in scopes:
            if s.rpm is None and s.tpm is None:
                continue
            rows.append(
                {
                    "scope": scope,
                    "rpm": s.rpm,
                    "requests_used": s.requests_this_minute,
                    "request_headroom": s.request_headroom,
                    "tpm": s.tpm,
                    "tokens_used": s.tokens_this_minute,
                    "token_headroom": s.token_headroom,
                }
            )
    if args.json:
        emit_json({"config_version": reply.config_version, "quotas": rows})
    else:
        print(f"env {args.env}, policy version {reply.config_version}; counts are for the current minute")
        print(
            table(
                rows,
                ["scope", "rpm", "requests_used", "request_headroom", "tpm", "tokens_used", "token_headroom"],
            )
        )
    return 0


async def set_block(
    settings, env: str, provider: str, blocked: bool, reason: str, as_json: bool
) -> BlockReply:
    body = from_options(
        BlockRequest, provider=provider, blocked=blocked, reason=reason, by=operator(settings).name
    )
    return await _ask(settings, env, names.router_block(env), body, BlockReply, as_json)


async def block(args, settings) -> int:
    reply = await set_block(settings, args.env, args.provider, True, args.reason, args.json)
    if args.json:
        emit_json(reply.model_dump(mode="json"))
    else:
        print(f"blocked: {reply.provider} (every router skips it now)")
        print(f"undo: sbctl provider unblock {reply.provider} --env {args.env}")
    return 0


async def unblock(args, settings) -> int:
    reply = await set_block(settings, args.env, args.provider, False, "", args.json)
    if args.json:
        emit_json(reply.model_dump(mode="json"))
    else:
        print(f"unblocked: {reply.provider}")
    return 0


PROBE_OPTIONS = {"timeout_s": "--timeout", "why": "--reason", "count": "--count", "model": "--model"}


async def probe(args, settings) -> int:
    """A few real calls to the provider through the gateway's adapter, blocked or not; exit 0
    when every one answered, 1 otherwise (keep the block)."""
    try:
        request = ProbeRequest(
            provider=args.provider,
            model=args.model,
            count=args.count,
            timeout_s=args.timeout,
            by=operator(settings).name,
            why=args.reason,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{PROBE_OPTIONS.get(e['loc'][0], e['loc'][0])}: {e['msg']}" for e in exc.errors()
        )
        fail(problems, code=errors.InvalidRequest.code, as_json=args.json, exit_code=EXIT_USAGE)
    deadline = args.count * args.timeout + 5.0
    reply: ProbeReply = await _ask(
        settings,
        args.env,
        names.gateway_probe(args.env),
        request,
        ProbeReply,
        args.json,
        timeout=deadline,
        who="no gateway",
    )
    state = (await fetch_status(settings, args.env, args.provider, args.json)).providers
    blocked = state[0].blocked if state else None
    ok = [c for c in reply.calls if c.outcome is AttemptOutcome.OK]
    recovered = len(ok) == len(reply.calls)
    if args.json:
        emit_json(reply.model_dump(mode="json") | {"blocked": blocked, "recovered": recovered})
        return 0 if recovered else 1
    where = f"BLOCKED ({blocked})" if blocked else "not blocked"
    print(
        f"probe {reply.provider}/{reply.model} in env {args.env} (policy version {reply.config_version}),"
        f" provider {where}; probes are recorded in the audit log and charged to no budget"
    )
    rows = [
        {
            "probe": c.invocation_id,
            "outcome": c.outcome.value,
            "http": c.status_code,
            "latency_ms": c.latency_ms,
            "detail": c.reason,
        }
        for c in reply.calls
    ]
    print(table(rows, ["probe", "outcome", "http", "latency_ms", "detail"]))
    if recovered:
        hint = f"; unblock: sbctl provider unblock {reply.provider}" if blocked else ""
        print(f"RECOVERED: {len(ok)}/{len(reply.calls)} probe calls answered{hint}")
        return 0
    print(f"NOT RECOVERED: {len(ok)}/{len(reply.calls)} probe calls answered; keep it blocked")
    return 1

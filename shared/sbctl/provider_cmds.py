"""sbctl provider status|block|unblock and sbctl quotas: the router's view of providers, and
the lever to route around one at once."""

from __future__ import annotations

from shared import names
from shared.contracts import BlockReply, BlockRequest, ProviderStatusReply, ProviderStatusRequest
from shared.sbctl.context import connect, operator
from shared.sbctl.output import emit_json, fail, table
from switchboard_sdk import errors


async def _ask(settings, env: str, subject: str, body, reply_model, as_json: bool):
    bus = await connect(settings)
    try:
        reply = await bus.request(subject, body, reply_model, timeout=5.0)
    except errors.SwitchboardError as exc:
        fail(f"the router did not answer: {exc.message}", code=exc.code, as_json=as_json)
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
        circuit = f"open {p.circuit_open_ms / 1000:.1f}s" if p.circuit_open_ms else "closed"
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
                    "cooldown": f"{m.cooldown_ms / 1000:.1f}s" if m.cooldown_ms else "-",
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
    body = BlockRequest(provider=provider, blocked=blocked, reason=reason, by=operator(settings).name)
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

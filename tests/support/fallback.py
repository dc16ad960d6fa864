"""Helpers for the fallback, router-state and drill tests: the audit log as the recorder wrote
it (PostgreSQL `events`), the router's provider status over NATS, simulator request counts,
metric deltas and policy edits. Everything reads the real thing."""

from __future__ import annotations

import contextlib
import json
import socket

import asyncpg
import nats

from shared import codec, names
from shared.contracts import ProviderState, ProviderStatusReply, ProviderStatusRequest
from tests.support.helpers import run_sbctl, sample
from tests.support.stack import wait_for

PRIMARY = ("openai-sim", "gpt-sim-large")  # support-triage tier 0
SECONDARY = ("anthropic-sim", "claude-sim-sonnet")  # support-triage tier 1


# --- the audit log -------------------------------------------------------------------------


async def events(stack, invocation_id: str | None = None, kind: str | None = None) -> list[dict]:
    """Event bodies recorded for this test's env, oldest first, optionally by invocation and kind."""
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        rows = await conn.fetch(
            "select body from events where env = $1"
            " and ($2::text is null or invocation_id = $2)"
            " and ($3::text is null or kind = $3) order by ts, event_id",
            stack.env,
            invocation_id,
            kind,
        )
    finally:
        await conn.close()
    return [json.loads(r["body"]) if isinstance(r["body"], str) else r["body"] for r in rows]


async def wait_events(
    stack, kind: str, count: int = 1, *, invocation_id: str | None = None, timeout: float = 10.0
) -> list[dict]:
    """Wait until at least `count` events of `kind` are recorded, then return all of them."""
    found: list[dict] = []

    async def enough() -> bool:
        found[:] = await events(stack, invocation_id, kind)
        return len(found) >= count

    await wait_for(
        enough, timeout=timeout, interval=0.05, message=f"{count} {kind} event(s) for {invocation_id}"
    )
    return found


# --- router state --------------------------------------------------------------------------


async def provider_status(stack, provider: str | None = None) -> ProviderStatusReply:
    """The router's answer on `sb.<env>.router.status` (any replica)."""
    nc = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    try:
        msg = await nc.request(
            names.router_status(stack.env), codec.encode(ProviderStatusRequest(provider=provider)), timeout=5
        )
    finally:
        await nc.close()
    reply = codec.decode(msg.data, ProviderStatusReply)
    assert reply.error is None, reply.error
    return reply


def provider(reply: ProviderStatusReply, name: str) -> ProviderState:
    return next(p for p in reply.providers if p.provider == name)


def model_state(reply: ProviderStatusReply, name: str, model: str):
    return next(m for m in provider(reply, name).models if m.model == model)


async def sbctl_json(stack, *args: str) -> dict:
    code, out, err = await run_sbctl(stack.infra, *args, "--env", stack.env, "--json")
    assert code == 0, f"sbctl {' '.join(args)} exited {code}: {out}{err}"
    return json.loads(out)


# --- simulator -----------------------------------------------------------------------------


async def sim_count(stack, provider_name: str, model: str | None = None) -> int:
    """Requests the simulator received for a provider (or one of its models)."""
    by_provider = (await stack.sim.control.stats())["by_provider"].get(provider_name, {})
    return by_provider.get(model, 0) if model else sum(by_provider.values())


# --- metrics -------------------------------------------------------------------------------


def fallback_metric(workflow: str, source: tuple[str, str], target: tuple[str, str], reason: str) -> float:
    return sample(
        "switchboard_fallback_activations_total",
        workflow=workflow,
        **{"from": "/".join(source), "to": "/".join(target)},
        reason=reason,
    )


def rate_limit_metric(provider_name: str, model: str, source: str) -> float:
    return sample("switchboard_rate_limit_events_total", provider=provider_name, model=model, source=source)


# --- policy --------------------------------------------------------------------------------


def closed_port() -> int:
    """A local port that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def extra_service(service):
    """Run one more replica of a service in this env; always shut it down."""
    await service.start()
    try:
        yield service
    finally:
        await service.shutdown()


async def steady_minute(redis, margin_s: float = 3.0) -> None:
    """Return when the Redis clock has at least `margin_s` left in its current minute (quotas
    are fixed Redis-time minutes), waiting for the next minute if it is about to roll over."""

    async def early_in_minute() -> bool:
        seconds, micros = await redis.time()
        return int(seconds) % 60 + int(micros) / 1e6 < 60 - margin_s

    await wait_for(early_in_minute, timeout=margin_s + 2, interval=0.1, message="the next minute")


@contextlib.asynccontextmanager
async def fixed_provider(status: int, body: bytes, content_type: str = "application/json"):
    """A real HTTP server answering every POST with one fixed response: a provider that
    misbehaves in a way the simulator cannot. Yields its base URL (ending in /v1)."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, status=status, content_type=content_type)

    async with provider_server(handler) as url:
        yield url


@contextlib.asynccontextmanager
async def provider_server(handler):
    """A real HTTP server answering every POST with `handler` (an aiohttp handler). Yields its
    base URL (ending in /v1)."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()

"""Services as real processes (`python -m services.<name>`): readiness, a SIGTERM during an
in-flight invocation (the agent still gets its reply, exit 0, one JSON log line), a router
killed with SIGKILL (the gateway plans as before from the state in Redis and keeps serving),
with exact metric deltas of the fresh processes, and the collector tuned after start-up."""

from __future__ import annotations

import asyncio
import functools
import signal

import pytest

from shared import keys
from shared.contracts import Status
from shared.service import GC_YOUNG_THRESHOLD
from tests.support.fallback import PRIMARY, SECONDARY
from tests.support.helpers import SIM_KEYS, ServiceProcess, infra_env, process_metric
from tests.support.stack import wait_for

WF = "support-triage"
LIMITS = "switchboard_rate_limit_events_total"
LOG_FIELDS = (
    "workflow",
    "invocation_id",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "status",
)


@pytest.fixture
async def procs(stack, tmp_path):
    """Start service processes of the test's environment; every one is stopped afterwards
    (the `stack` fixture then removes the environment with `cleanup_env`)."""
    started: list[ServiceProcess] = []
    env = infra_env(
        stack.infra,
        SB_ENV=stack.env,
        SB_CONFIG_DIR=str(stack.policy_dir),
        SB_SIMULATOR_URL=stack.sim.url,
        SB_DRAIN_TIMEOUT_S="15",
        **SIM_KEYS,
    )

    async def start(*names: str) -> dict[str, ServiceProcess]:
        batch = [ServiceProcess(name, env, tmp_path) for name in names]
        started.extend(batch)
        for p in batch:
            await p.start()
        await asyncio.gather(*(p.wait_ready() for p in batch))
        return {p.name: p for p in batch}

    try:
        yield start
    finally:
        await asyncio.gather(*(p.stop() for p in started), return_exceptions=True)


async def test_sigterm_during_an_invocation_replies_logs_and_exits_0(stack, procs):
    running = await procs("router", "budget", "recorder", "gateway")
    gateway = running["gateway"]
    await stack.sim.control.set_latency(1500)
    client = await stack.client()

    call = asyncio.create_task(client.invoke("support-triage", "slow one", timeout=30))
    await wait_for(
        lambda: _provider_calls(stack), timeout=15, interval=0.02, message="the call to reach the provider"
    )
    assert not call.done()
    gateway.signal(signal.SIGTERM)

    result = await asyncio.wait_for(call, 30)
    code = await gateway.wait(30)

    assert result.status is Status.SUCCESS, result
    assert result.latency_ms >= 1500
    assert code == 0, gateway.output()
    lines = [e for e in gateway.log_lines() if e.get("event") == "invocation"]
    assert len(lines) == 1, gateway.output()
    line = lines[0]
    assert {k: line.get(k) for k in LOG_FIELDS} == {
        "workflow": "support-triage",
        "invocation_id": result.invocation_id,
        "model": "gpt-sim-large",
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "latency_ms": result.latency_ms,
        "status": "success",
    }
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0
    assert any(e.get("event") == "stopped" for e in gateway.log_lines())


async def test_gateway_keeps_serving_when_the_router_is_killed(stack, procs, redis):
    running = await procs("router", "budget", "recorder", "gateway")
    router, gateway = running["router"], running["gateway"]
    await stack.sim.control.add_fault("429", provider=PRIMARY[0], count=1, retry_after_s=30)
    client = await stack.client()
    first = await client.invoke(WF, "meets the 429")
    assert first.status is Status.FALLBACK
    await wait_for(
        lambda: redis.exists(keys.cooldown(stack.env, *PRIMARY)), message="the router to record the cooldown"
    )
    assert await process_metric(router.port, LIMITS, provider=PRIMARY[0], source="provider_429") == 1

    router.signal(signal.SIGKILL)
    assert await router.wait(10) == -signal.SIGKILL

    after = await client.invoke(WF, "after", timeout=20)

    assert after.status is Status.FALLBACK, after  # planned in the gateway: the cooldown holds
    assert [(a.provider, a.source) for a in after.attempts] == [
        (PRIMARY[0], "cooldown"),
        (SECONDARY[0], None),
    ]
    assert gateway.proc.returncode is None
    metric = functools.partial(process_metric, gateway.port)
    assert await metric("switchboard_invocations_total", status="fallback", provider=SECONDARY[0]) == 2
    assert (
        await metric("switchboard_provider_attempts_total", provider=PRIMARY[0], outcome="rate_limited") == 1
    )
    assert await metric("switchboard_provider_attempts_total", provider=PRIMARY[0], outcome="ok") == 0
    assert await metric("switchboard_fallback_activations_total", reason="cooldown") == 1
    for scope, requests in ((PRIMARY[0], b"1"), ("/".join(SECONDARY), b"2")):
        assert (await redis.hget(keys.quota(stack.env, scope), "req")) == requests


async def test_a_started_process_tunes_its_collector(stack, procs):
    """Start-up's objects are out of the cyclic collector's walk once the process serves, and the
    young generation is collected less often (docs/performance.md)."""
    running = await procs("router")
    router = running["router"]
    await wait_for(
        lambda: any(e.get("event") == "collector tuned" for e in router.log_lines()),
        message="the router to tune its collector",
    )
    [tuned] = [e for e in router.log_lines() if e.get("event") == "collector tuned"]
    started = [e for e in router.log_lines() if e.get("event") == "service started"]
    assert started and tuned["frozen"] > 10_000, router.output()
    assert tuned["thresholds"][0] == GC_YOUNG_THRESHOLD


async def _provider_calls(stack) -> int:
    return (await stack.sim.control.stats())["total"]

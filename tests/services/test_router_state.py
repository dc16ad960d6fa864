"""Shared provider state through real routers and gateways: a 429's Retry-After cooldown is
honoured by replicas that never saw the 429; quota exhaustion, an open circuit and an
operator block each make the next call skip the provider, with the skip in the attempts, the
audit log and the metrics."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from services.gateway.service import GatewayService
from services.router.service import RouterService
from shared.contracts import AttemptOutcome, Status
from tests.support.fallback import (
    PRIMARY,
    SECONDARY,
    events,
    extra_service,
    fallback_metric,
    model_state,
    provider,
    provider_status,
    rate_limit_metric,
    sbctl_json,
    sim_count,
    steady_minute,
    wait_events,
)
from tests.support.helpers import run_sbctl
from tests.support.stack import wait_for

WORKFLOW = "support-triage"


def assert_skipped_primary(result, reason_part: str) -> None:
    assert result.status is Status.FALLBACK, result
    assert (result.provider, result.model) == SECONDARY
    skipped, served = result.attempts
    assert (skipped.tier, skipped.provider, skipped.model, skipped.outcome) == (
        0,
        *PRIMARY,
        AttemptOutcome.SKIPPED,
    )
    assert reason_part in skipped.reason, skipped.reason
    assert (served.tier, served.outcome) == (1, AttemptOutcome.OK)


async def cooldown_ms(stack) -> int:
    return model_state(await provider_status(stack), *PRIMARY).cooldown_ms


async def test_retry_after_cooldown_is_honoured_by_replicas_that_never_saw_the_429(running):
    # Retry-After far longer than the test (and than the 5 s default): the cooldown must still be
    # running when the last replica is asked, however slowly a busy machine gets there.
    await running.sim.control.add_fault("429", provider="openai-sim", count=1, retry_after_s=60)
    client = await running.client()

    first = await client.invoke(WORKFLOW, "the call that meets the 429")

    assert first.attempts[0].outcome is AttemptOutcome.RATE_LIMITED
    assert first.status is Status.FALLBACK
    left = await wait_for(lambda: cooldown_ms(running), message="the cooldown in the router's status")
    assert 30_000 < left <= 60_000, left
    assert model_state(await provider_status(running), "openai-sim", "gpt-sim-mini").cooldown_ms == 0
    [limit] = await wait_events(running, "rate_limit", invocation_id=first.invocation_id)
    assert (limit["source"], limit["provider"], limit["model"]) == ("provider_429", *PRIMARY)
    assert limit["retry_after_s"] == 60
    assert await sim_count(running, *PRIMARY) == 1

    results = []
    # A second router and a second gateway join (same env, same queue groups) after the 429.
    async with (
        extra_service(RouterService(running.settings("router"))),
        extra_service(GatewayService(running.settings("gateway"))),
    ):
        results += [await client.invoke(WORKFLOW, f"both replicas {i}") for i in range(4)]
        await running.stop("gateway")
        await running.stop("router")  # from here on only the replicas that never saw the 429
        results += [await client.invoke(WORKFLOW, f"new replicas only {i}") for i in range(3)]
        status = await sbctl_json(running, "provider", "status", "--provider", "openai-sim")

    for result in results:
        assert_skipped_primary(result, "cooling down after a 429")
    assert await sim_count(running, *PRIMARY) == 1, "the primary was called during its cooldown"
    assert await sim_count(running, *SECONDARY) == 1 + len(results)
    [p] = status["providers"]
    large = next(m for m in p["models"] if m["model"] == PRIMARY[1])
    assert 0 < large["cooldown_ms"] <= 60_000
    [fallback] = await wait_events(running, "fallback", invocation_id=results[-1].invocation_id)
    assert (fallback["from_tier"], fallback["to_tier"], fallback["outcome"]) == (0, 1, "skipped")
    assert "cooling down" in fallback["reason"]


async def test_the_primary_takes_traffic_again_when_the_cooldown_ends(running):
    await running.sim.control.add_fault("429", provider="openai-sim", count=1, retry_after_s=0.5)
    client = await running.client()
    assert (await client.invoke(WORKFLOW, "429")).status is Status.FALLBACK
    await wait_for(lambda: cooldown_ms(running), message="the cooldown to start")

    async def cooled_down() -> bool:
        return await cooldown_ms(running) == 0

    await wait_for(cooled_down, timeout=3, message="the cooldown to end")
    result = await client.invoke(WORKFLOW, "after the cooldown")

    assert result.status is Status.SUCCESS
    assert [(a.tier, a.outcome) for a in result.attempts] == [(0, AttemptOutcome.OK)]


async def test_model_quota_exhaustion_skips_the_tier_with_a_local_quota_event(running):
    policy = running.policy()
    policy["providers"]["openai-sim"]["models"]["gpt-sim-large"]["quota"] = {"rpm": 2}
    await running.apply(policy)
    redis = aioredis.from_url(running.infra.redis_url)
    try:
        await steady_minute(redis)  # the three calls must fall in one quota minute
    finally:
        await redis.aclose()
    limit_before = rate_limit_metric(*PRIMARY, "local_quota")
    fallback_before = fallback_metric(WORKFLOW, PRIMARY, SECONDARY, "local_quota")
    client = await running.client()

    first = [await client.invoke(WORKFLOW, f"within quota {i}") for i in range(2)]
    third = await client.invoke(WORKFLOW, "over quota")

    assert [r.status for r in first] == [Status.SUCCESS, Status.SUCCESS]
    assert_skipped_primary(third, "out of quota: model requests 2/2 per minute")
    assert await sim_count(running, *PRIMARY) == 2
    [event] = await wait_events(running, "rate_limit", invocation_id=third.invocation_id)
    assert (event["source"], event["provider"], event["model"]) == ("local_quota", *PRIMARY)
    assert "2/2" in event["detail"]
    for r in first:
        assert await events(running, r.invocation_id, "rate_limit") == []
    [fallback] = await wait_events(running, "fallback", invocation_id=third.invocation_id)
    assert "out of quota" in fallback["reason"]
    assert rate_limit_metric(*PRIMARY, "local_quota") == limit_before + 1
    await wait_for(
        lambda: fallback_metric(WORKFLOW, PRIMARY, SECONDARY, "local_quota") == fallback_before + 1,
        message="fallback metric with reason skipped",
    )
    large = model_state(await provider_status(running), *PRIMARY)
    assert (large.rpm, large.requests_this_minute, large.request_headroom) == (2, 2, 0)


async def test_consecutive_server_errors_open_the_circuit_and_the_next_call_skips_it(running):
    policy = running.policy()
    policy["providers"]["openai-sim"]["circuit"] = {"failures": 3, "open_s": 30}
    await running.apply(policy)
    await running.sim.control.add_fault("500", provider="openai-sim")  # until removed
    client = await running.client()

    failing = [await client.invoke(WORKFLOW, f"500 number {i}") for i in range(2)]
    state = await wait_for(
        lambda: _failures(running, 2), message="two consecutive failures in the router's state"
    )
    assert state.circuit_open_ms == 0, "the circuit opened before the threshold"
    failing.append(await client.invoke(WORKFLOW, "500 number 2"))
    for r in failing:
        assert r.status is Status.FALLBACK
        assert r.attempts[0].outcome is AttemptOutcome.SERVER_ERROR
    state = await wait_for(lambda: _failures(running, 3), message="three consecutive failures")
    assert 25_000 < state.circuit_open_ms <= 30_000
    [circuit] = await wait_events(running, "circuit")
    assert (circuit["provider"], circuit["state"], circuit["failures"]) == ("openai-sim", "open", 3)

    result = await client.invoke(WORKFLOW, "while the circuit is open")

    assert_skipped_primary(result, "circuit open")
    assert await sim_count(running, "openai-sim") == 3


async def _failures(stack, count: int):
    state = provider(await provider_status(stack, "openai-sim"), "openai-sim")
    return state if state.consecutive_failures == count else None


async def test_operator_block_is_skipped_until_unblocked(running):
    client = await running.client()
    code, out, err = await run_sbctl(
        running.infra, "provider", "block", "openai-sim", "--reason", "incident 42", "--env", running.env
    )
    assert code == 0, err
    assert "blocked: openai-sim" in out

    blocked = await client.invoke(WORKFLOW, "while blocked")

    assert_skipped_primary(blocked, "blocked by operator: incident 42")
    assert await sim_count(running, "openai-sim") == 0
    status = await sbctl_json(running, "provider", "status")
    assert provider_of(status, "openai-sim")["blocked"] == "incident 42"
    assert provider_of(status, "anthropic-sim")["blocked"] is None
    [event] = await wait_events(running, "provider_block")
    assert (event["provider"], event["blocked"], event["reason"]) == ("openai-sim", True, "incident 42")

    code, out, err = await run_sbctl(running.infra, "provider", "unblock", "openai-sim", "--env", running.env)
    assert code == 0, err
    again = await client.invoke(WORKFLOW, "after unblock")

    assert again.status is Status.SUCCESS
    assert [(a.provider, a.outcome) for a in again.attempts] == [("openai-sim", AttemptOutcome.OK)]
    assert provider(await provider_status(running), "openai-sim").blocked is None


def provider_of(status: dict, name: str) -> dict:
    return next(p for p in status["providers"] if p["provider"] == name)


async def test_concurrent_calls_never_exceed_the_model_quota(running):
    policy = running.policy()
    policy["providers"]["openai-sim"]["models"]["gpt-sim-large"]["quota"] = {"rpm": 5}
    await running.apply(policy)
    redis = aioredis.from_url(running.infra.redis_url)
    try:
        await steady_minute(redis)
    finally:
        await redis.aclose()
    client = await running.client()

    results = await asyncio.gather(*(client.invoke(WORKFLOW, f"burst {i}") for i in range(12)))

    by_status = sorted(r.status.value for r in results)
    assert by_status == ["fallback"] * 7 + ["success"] * 5
    assert await sim_count(running, *PRIMARY) == 5
    for r in results:
        if r.status is Status.FALLBACK:
            assert_skipped_primary(r, "out of quota")


async def test_the_degradation_plan_names_tiers_and_key_variables_never_keys(stack):
    from shared import codec, names
    from shared.contracts import DegradationPlan, DegradationRequest

    await stack.start("router")
    sb = await stack.client()
    ask = sb._nc.request  # the SDK's own connection, as an agent would ask

    passthrough = codec.decode(
        (
            await ask(
                names.degradation(stack.env), codec.encode(DegradationRequest(workflow="research-summary"))
            )
        ).data,
        DegradationPlan,
    )
    closed = codec.decode(
        (
            await ask(
                names.degradation(stack.env), codec.encode(DegradationRequest(workflow="support-triage"))
            )
        ).data,
        DegradationPlan,
    )
    unknown = codec.decode(
        (await ask(names.degradation(stack.env), codec.encode(DegradationRequest(workflow="nope")))).data,
        DegradationPlan,
    )

    assert passthrough.mode == "passthrough" and passthrough.max_tokens_per_invocation == 16000
    assert [(t.provider, t.kind, t.model, t.api_key_env) for t in passthrough.tiers] == [
        ("anthropic-sim", "anthropic", "claude-sim-sonnet", "SB_ANTHROPIC_SIM_API_KEY"),
        ("openai-sim", "openai", "gpt-sim-large", "SB_OPENAI_SIM_API_KEY"),
        ("openai-sim", "openai", "gpt-sim-mini", "SB_OPENAI_SIM_API_KEY"),
    ]
    assert passthrough.tiers[0].base_url == f"{stack.sim.url}/p/anthropic-sim/v1"
    assert "sk-test" not in passthrough.model_dump_json()
    assert closed.mode == "fail_closed" and closed.tiers == []
    assert unknown.error.code == "unknown_workflow"

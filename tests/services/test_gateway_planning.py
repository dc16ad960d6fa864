"""The gateway plans in its own process with one call of the shared acquire script: it debits a
provider's per-minute quotas once per tier it hands out (never for a call the budget refuses or
a duplicate), honours at its very next plan the cooldown that another gateway's outcome report
made the router record, and routes with the router stopped (quotas still checked and debited;
outcomes are not learned until the router is back)."""

from __future__ import annotations

import uuid

import pytest

from services.gateway.service import GatewayService
from shared import keys
from shared.contracts import AttemptOutcome, Status
from tests.support.fallback import (
    PRIMARY,
    SECONDARY,
    extra_service,
    rate_limit_metric,
    sim_count,
    steady_minute,
    wait_events,
)
from tests.support.stack import wait_for

WORKFLOW = "support-triage"  # tiers: PRIMARY, SECONDARY; max 4000 tokens per invocation


@pytest.fixture
async def redis(redis, running):
    """The test's Redis, early in a Redis-clock minute (quota counts are per minute)."""
    await steady_minute(redis)
    return redis


async def requests_counted(redis, env: str) -> dict[str, int]:
    """This minute's requests in each quota hash the tiers of the workflow touch."""
    out = {}
    for provider, model in (PRIMARY, SECONDARY):
        for scope in (provider, f"{provider}/{model}"):
            counts = await redis.hgetall(keys.quota(env, scope))
            out[scope] = int(counts.get(b"req", 0))
    return out


def debited(*tiers: tuple[str, str]) -> dict[str, int]:
    out = {scope: 0 for p, m in (PRIMARY, SECONDARY) for scope in (p, f"{p}/{m}")}
    for provider, model in tiers:
        out[provider] += 1
        out[f"{provider}/{model}"] += 1
    return out


async def test_quota_is_debited_once_per_tier_handed_out_and_never_for_a_refusal_or_a_duplicate(
    running, redis
):
    client = await running.client()

    first = await client.invoke(WORKFLOW, "one call", invocation_id="inv-once")
    assert first.status is Status.SUCCESS
    assert await requests_counted(redis, running.env) == debited(PRIMARY)

    again = await client.invoke(WORKFLOW, "one call", invocation_id="inv-once")  # a retry: replayed
    refused = await client.invoke(WORKFLOW, "too big", max_tokens=5000)  # over the 4000 ceiling

    assert again.status is Status.SUCCESS and again.invocation_id == first.invocation_id
    assert refused.status is Status.BUDGET_EXCEEDED
    assert await requests_counted(redis, running.env) == debited(PRIMARY)
    assert await sim_count(running, *PRIMARY) == 1

    await running.sim.control.add_fault("500", provider=PRIMARY[0], count=1)
    fell_back = await client.invoke(WORKFLOW, "primary fails")

    assert fell_back.status is Status.FALLBACK
    assert await requests_counted(redis, running.env) == debited(PRIMARY, PRIMARY, SECONDARY)


async def test_a_cooldown_reported_through_one_gateway_is_honoured_by_the_next_plan_of_another(
    running, redis
):
    await running.sim.control.add_fault("429", provider=PRIMARY[0], count=1, retry_after_s=30)
    client = await running.client()
    first = await client.invoke(WORKFLOW, "meets the 429")
    assert first.attempts[0].outcome is AttemptOutcome.RATE_LIMITED
    cooldown = keys.cooldown(running.env, *PRIMARY)
    await wait_for(lambda: redis.exists(cooldown), message="the router to record the cooldown")

    async with extra_service(GatewayService(running.settings("gateway"))):
        await running.stop("gateway")  # from here on only the gateway that never saw the 429
        result = await client.invoke(WORKFLOW, "planned by the other gateway")

    assert result.status is Status.FALLBACK, result
    skipped = result.attempts[0]
    assert (skipped.tier, skipped.outcome, skipped.source) == (0, AttemptOutcome.SKIPPED, "cooldown")
    assert skipped.reason.startswith("cooling down after a 429 (")
    assert await sim_count(running, *PRIMARY) == 1
    assert await requests_counted(redis, running.env) == debited(PRIMARY, SECONDARY, SECONDARY)


async def test_with_the_router_stopped_quotas_are_still_checked_debited_and_reported(running, redis):
    policy = running.policy()
    policy["providers"][PRIMARY[0]]["models"][PRIMARY[1]]["quota"] = {"rpm": 2}
    await running.apply(policy)
    await steady_minute(redis)
    await running.stop("router")
    limits = rate_limit_metric(*PRIMARY, "local_quota")
    client = await running.client()

    within = [await client.invoke(WORKFLOW, f"within quota {i}") for i in range(2)]
    over = await client.invoke(WORKFLOW, "over quota")

    assert [r.status for r in within] == [Status.SUCCESS, Status.SUCCESS]
    assert over.status is Status.FALLBACK
    skipped = over.attempts[0]
    assert (skipped.source, skipped.reason) == ("local_quota", "out of quota: model requests 2/2 per minute")
    assert await sim_count(running, *PRIMARY) == 2
    assert await requests_counted(redis, running.env) == debited(PRIMARY, PRIMARY, SECONDARY)
    assert rate_limit_metric(*PRIMARY, "local_quota") == limits + 1
    [event] = await wait_events(running, "rate_limit", invocation_id=over.invocation_id)
    assert (event["source"], event["detail"]) == ("local_quota", skipped.reason)


async def test_with_the_router_stopped_a_429_starts_no_cooldown_until_it_is_back(running, redis):
    await running.stop("router")
    client = await running.client()
    cooldown = keys.cooldown(running.env, *PRIMARY)
    await running.sim.control.add_fault("429", provider=PRIMARY[0], count=1, retry_after_s=30)

    limited = await client.invoke(WORKFLOW, "429 while the router is down")
    after = await client.invoke(WORKFLOW, "the next call")

    assert limited.attempts[0].outcome is AttemptOutcome.RATE_LIMITED
    assert after.status is Status.SUCCESS  # nobody recorded the 429: the primary is tried again
    assert await redis.exists(cooldown) == 0

    await running.start("router")
    await running.sim.control.add_fault("429", provider=PRIMARY[0], count=1, retry_after_s=30)
    again = await client.invoke(WORKFLOW, "429 with the router back")
    assert again.attempts[0].outcome is AttemptOutcome.RATE_LIMITED
    await wait_for(lambda: redis.exists(cooldown), message="the router to record the new cooldown")
    skipped = (await client.invoke(WORKFLOW, f"after it {uuid.uuid4().hex}")).attempts[0]
    assert (skipped.outcome, skipped.source) == (AttemptOutcome.SKIPPED, "cooldown")

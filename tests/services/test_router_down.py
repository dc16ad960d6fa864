"""The gateway without its router: it plans from the router's state in Redis as always, so an
operator block and a 429 cooldown recorded before the router stopped still hold; when that
state cannot be read it tries every tier in policy order (and says so in a warning)."""

from __future__ import annotations

from shared import keys
from shared.contracts import AttemptOutcome, Status
from tests.support.fallback import PRIMARY, SECONDARY, closed_port, model_state, provider_status, sim_count
from tests.support.helpers import sample
from tests.support.stack import wait_for

WORKFLOW = "support-triage"


def skipped_primary(result, source: str) -> None:
    assert result.status is Status.FALLBACK, result
    assert (result.provider, result.model) == SECONDARY
    skipped = result.attempts[0]
    assert (skipped.tier, skipped.provider, skipped.outcome, skipped.source) == (
        0,
        PRIMARY[0],
        AttemptOutcome.SKIPPED,
        source,
    )


async def test_an_operator_block_holds_with_the_router_down(running):
    await running["router"].provider_state.block(PRIMARY[0], "incident 7")
    await running.stop("router")
    client = await running.client()

    result = await client.invoke(WORKFLOW, "router is down")

    skipped_primary(result, "blocked")
    assert result.attempts[0].reason == "blocked by operator: incident 7"
    assert await sim_count(running, PRIMARY[0]) == 0


async def test_a_429_cooldown_holds_with_the_router_down(running):
    await running.sim.control.add_fault("429", provider=PRIMARY[0], count=1, retry_after_s=60)
    client = await running.client()
    first = await client.invoke(WORKFLOW, "meets the 429")
    assert first.attempts[0].outcome is AttemptOutcome.RATE_LIMITED

    async def cooling() -> bool:
        return model_state(await provider_status(running), *PRIMARY).cooldown_ms > 0

    await wait_for(cooling, message="the router to record the cooldown")
    await running.stop("router")

    result = await client.invoke(WORKFLOW, "router is down")

    skipped_primary(result, "cooldown")
    assert await sim_count(running, PRIMARY[0]) == 1


async def test_with_neither_router_nor_its_state_every_tier_is_tried_in_order(stack, redis, caplog):
    await redis.hset(keys.provider_blocks(stack.env), PRIMARY[0], "only in a Redis it cannot read")
    await stack.start("budget", "recorder")
    await stack.start("gateway", gateway={"redis_url": f"redis://127.0.0.1:{closed_port()}/0"})
    client = await stack.client()
    answered = sample(
        "switchboard_invocations_total",
        workflow=WORKFLOW,
        status="success",
        provider=PRIMARY[0],
        model=PRIMARY[1],
    )

    result = await client.invoke(WORKFLOW, "nothing to plan with")

    assert result.status is Status.SUCCESS, result
    assert (result.provider, result.model) == PRIMARY
    assert [(a.tier, a.outcome) for a in result.attempts] == [(0, AttemptOutcome.OK)]
    assert await sim_count(stack, PRIMARY[0]) == 1
    assert await redis.keys(keys.quota(stack.env, "*")) == []  # nothing could be debited
    assert (
        sample(
            "switchboard_invocations_total",
            workflow=WORKFLOW,
            status="success",
            provider=PRIMARY[0],
            model=PRIMARY[1],
        )
        == answered + 1
    )

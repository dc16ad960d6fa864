"""The whole path of one invocation through real services, NATS, Redis and PostgreSQL."""

from __future__ import annotations

import asyncpg

from shared.contracts import AttemptOutcome, Status
from tests.support.stack import wait_for


async def recorded(stack, invocation_id: str):
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        return await conn.fetchrow(
            "select * from invocations where env = $1 and invocation_id = $2", stack.env, invocation_id
        )
    finally:
        await conn.close()


async def test_success_is_answered_recorded_and_traced(running):
    client = await running.client()
    result = await client.invoke(
        "support-triage", "My printer is on fire", session_id="s-1", agent="triage-bot"
    )

    assert result.status is Status.SUCCESS
    assert (result.provider, result.model) == ("openai-sim", "gpt-sim-large")
    assert result.output.startswith("[openai-sim/gpt-sim-large] ")
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    assert [a.outcome for a in result.attempts] == [AttemptOutcome.OK]
    assert result.trace_id and len(result.trace_id) == 32
    assert result.config_version.startswith("files:")

    row = await wait_for(lambda: recorded(running, result.invocation_id), message="the audit row")
    assert row["status"] == "success"
    assert row["trace_id"] == result.trace_id
    assert row["prompt_tokens"] == result.usage.prompt_tokens
    assert row["agent"] == "triage-bot"


async def test_primary_429_falls_back_to_the_next_tier(running):
    await running.sim.control.add_fault("429", provider="openai-sim", count=1, retry_after_s=2)
    client = await running.client()
    result = await client.invoke("support-triage", "hello")

    assert result.status is Status.FALLBACK
    assert result.provider == "anthropic-sim"
    assert [(a.tier, a.outcome) for a in result.attempts] == [
        (0, AttemptOutcome.RATE_LIMITED),
        (1, AttemptOutcome.OK),
    ]
    assert result.attempts[0].status_code == 429


async def test_trace_context_travels_from_the_sdk_through_the_gateway_to_the_budget(running):
    client = await running.client()
    result = await client.invoke("support-triage", "too long", max_tokens=50_000, session_id="s-trace")
    assert result.status is Status.BUDGET_EXCEEDED

    async def breach_event():
        conn = await asyncpg.connect(running.infra.database_url)
        try:
            return await conn.fetchrow(
                "select service, trace_id from events where env = $1 and invocation_id = $2 and kind = $3",
                running.env,
                result.invocation_id,
                "budget_breach",
            )
        finally:
            await conn.close()

    event = await wait_for(breach_event, message="the budget's breach event")
    # The budget service emitted it inside the span it opened from the gateway's NATS headers,
    # which the gateway opened from the SDK's: one trace id across three processes' hops.
    assert (event["service"], event["trace_id"]) == ("budget", result.trace_id)

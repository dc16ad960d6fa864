"""The fallback chain against real services and the provider simulator: every way a primary
can fail is served by the next tier, with `attempt`, `fallback` and `rate_limit` events in
the audit log and fallback metrics; a failing chain lists every attempt; a 400 does not fall
back."""

from __future__ import annotations

import pytest

from shared.contracts import AttemptOutcome, Status
from tests.support.fallback import (
    PRIMARY,
    SECONDARY,
    closed_port,
    events,
    fallback_metric,
    fixed_provider,
    rate_limit_metric,
    sim_count,
    wait_events,
)
from tests.support.stack import wait_for

WORKFLOW = "support-triage"


async def _fault_429(stack):
    await stack.sim.control.add_fault("429", provider="openai-sim", count=1, retry_after_s=2)


async def _fault_500(stack):
    await stack.sim.control.add_fault("500", provider="openai-sim", count=1)


async def _fault_hang(stack):
    policy = stack.policy()
    policy["workflows"][WORKFLOW]["tiers"][0]["timeout_ms"] = 300
    await stack.apply(policy)
    await stack.sim.control.add_fault("hang", provider="openai-sim", count=1)


async def _fault_refused(stack):
    policy = stack.policy()
    policy["providers"]["openai-sim"]["base_url"] = f"http://127.0.0.1:{closed_port()}/v1"
    await stack.apply(policy)


async def _fault_malformed(stack):
    await stack.sim.control.add_fault("malformed", provider="openai-sim", count=1)


# (fault, primary outcome, its HTTP status, reaches the simulator)
CASES = {
    "429": (_fault_429, AttemptOutcome.RATE_LIMITED, 429, True),
    "500": (_fault_500, AttemptOutcome.SERVER_ERROR, 500, True),
    "hang": (_fault_hang, AttemptOutcome.TIMEOUT, None, True),
    "connection_refused": (_fault_refused, AttemptOutcome.CONNECTION_ERROR, None, False),
    "malformed": (_fault_malformed, AttemptOutcome.MALFORMED, 200, True),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_failed_primary_is_served_by_the_next_tier_with_events_and_metrics(running, case):
    inject, outcome, status_code, reaches_sim = CASES[case]
    await inject(running)
    metric_before = fallback_metric(WORKFLOW, PRIMARY, SECONDARY, outcome.value)
    client = await running.client()

    result = await client.invoke(WORKFLOW, f"fallback case {case}", timeout=20)

    assert result.status is Status.FALLBACK, result
    assert (result.provider, result.model) == SECONDARY
    assert result.output.startswith("[anthropic-sim/claude-sim-sonnet] ")
    assert result.error is None
    assert [(a.tier, a.provider, a.outcome) for a in result.attempts] == [
        (0, PRIMARY[0], outcome),
        (1, SECONDARY[0], AttemptOutcome.OK),
    ]
    first = result.attempts[0]
    assert first.status_code == status_code
    assert first.reason
    if case == "hang":
        assert 300 <= first.latency_ms < 2000, first.latency_ms
    assert await sim_count(running, *PRIMARY) == (1 if reaches_sim else 0)
    assert await sim_count(running, *SECONDARY) == 1

    iid = result.invocation_id
    attempts = await wait_events(running, "attempt", 2, invocation_id=iid)
    assert sorted((e["tier"], e["provider"], e["outcome"]) for e in attempts) == [
        (0, PRIMARY[0], outcome.value),
        (1, SECONDARY[0], "ok"),
    ]
    assert all(e["workflow"] == WORKFLOW and e["trace_id"] == result.trace_id for e in attempts)
    [fallback] = await wait_events(running, "fallback", 1, invocation_id=iid)
    assert (fallback["from_tier"], fallback["from_provider"], fallback["from_model"]) == (0, *PRIMARY)
    assert (fallback["to_tier"], fallback["to_provider"], fallback["to_model"]) == (1, *SECONDARY)
    assert fallback["reason"] == outcome.value
    assert fallback["outcome"] == outcome.value
    [invocation] = await wait_events(running, "invocation", 1, invocation_id=iid)
    assert invocation["status"] == "fallback"
    assert [a["outcome"] for a in invocation["attempts"]] == [outcome.value, "ok"]
    await wait_for(
        lambda: fallback_metric(WORKFLOW, PRIMARY, SECONDARY, outcome.value) == metric_before + 1,
        message="switchboard_fallback_activations_total +1",
    )

    rate_limits = await events(running, iid, "rate_limit")
    if case == "429":
        if not rate_limits:
            rate_limits = await wait_events(running, "rate_limit", 1, invocation_id=iid)
        [event] = rate_limits
        assert event["source"] == "provider_429"
        assert (event["provider"], event["model"]) == PRIMARY
        assert event["retry_after_s"] == 2
    else:
        assert rate_limits == []


async def test_provider_429_counts_a_rate_limit_event_metric(running):
    before = rate_limit_metric(*PRIMARY, "provider_429")
    await running.sim.control.add_fault("429", provider="openai-sim", count=1, retry_after_s=1)
    client = await running.client()

    result = await client.invoke(WORKFLOW, "rate limited")

    assert result.status is Status.FALLBACK
    await wait_for(
        lambda: rate_limit_metric(*PRIMARY, "provider_429") == before + 1,
        message="switchboard_rate_limit_events_total{source=provider_429} +1",
    )


async def test_every_tier_failing_is_an_error_listing_every_attempt(running):
    await running.sim.control.add_fault("500")  # every provider, every model, until removed
    workflow = "research-summary"  # three tiers: anthropic, openai large, openai mini
    client = await running.client()

    result = await client.invoke(workflow, "nothing answers")

    assert result.status is Status.ERROR
    assert result.error.code == "all_tiers_failed"
    assert result.provider is None and result.output is None
    assert [(a.tier, a.provider, a.model, a.outcome, a.status_code) for a in result.attempts] == [
        (0, "anthropic-sim", "claude-sim-sonnet", AttemptOutcome.SERVER_ERROR, 500),
        (1, "openai-sim", "gpt-sim-large", AttemptOutcome.SERVER_ERROR, 500),
        (2, "openai-sim", "gpt-sim-mini", AttemptOutcome.SERVER_ERROR, 500),
    ]
    assert (await running.sim.control.stats())["total"] == 3

    iid = result.invocation_id
    [invocation] = await wait_events(running, "invocation", 1, invocation_id=iid)
    assert invocation["status"] == "error"
    assert invocation["error"]["code"] == "all_tiers_failed"
    assert [(a["tier"], a["outcome"]) for a in invocation["attempts"]] == [
        (0, "server_error"),
        (1, "server_error"),
        (2, "server_error"),
    ]
    attempts = await wait_events(running, "attempt", 3, invocation_id=iid)
    assert sorted(e["tier"] for e in attempts) == [0, 1, 2]
    fallbacks = await wait_events(running, "fallback", 2, invocation_id=iid)
    assert sorted((e["from_tier"], e["to_tier"]) for e in fallbacks) == [(0, 1), (1, 2)]


async def test_client_error_does_not_fall_back(running):
    await running.sim.control.add_fault("400", provider="openai-sim", count=1)
    metric_before = fallback_metric(WORKFLOW, PRIMARY, SECONDARY, "client_error")
    client = await running.client()

    result = await client.invoke(WORKFLOW, "a request the provider refuses")

    assert result.status is Status.ERROR
    assert result.error.code == "provider_error"
    assert "400" in result.error.message
    assert [(a.tier, a.outcome, a.status_code) for a in result.attempts] == [
        (0, AttemptOutcome.CLIENT_ERROR, 400)
    ]
    assert await sim_count(running, *PRIMARY) == 1
    assert await sim_count(running, "anthropic-sim") == 0

    iid = result.invocation_id
    [invocation] = await wait_events(running, "invocation", 1, invocation_id=iid)
    assert invocation["error"]["code"] == "provider_error"
    [attempt] = await wait_events(running, "attempt", 1, invocation_id=iid)
    assert attempt["outcome"] == "client_error"
    assert await events(running, iid, "fallback") == []
    assert fallback_metric(WORKFLOW, PRIMARY, SECONDARY, "client_error") == metric_before


async def served_through_fallback(stack, base_url: str):
    policy = stack.policy()
    policy["providers"]["openai-sim"]["base_url"] = base_url
    await stack.apply(policy)
    client = await stack.client()
    return await client.invoke(WORKFLOW, "a provider answering nonsense")


@pytest.mark.parametrize(
    ("status", "body", "content_type", "outcome"),
    [
        (200, b"<html>502 Bad Gateway</html>", "text/html", AttemptOutcome.MALFORMED),
        (200, b'{"choices": []}', "application/json", AttemptOutcome.MALFORMED),
        (502, b"<html>upstream down</html>", "text/html", AttemptOutcome.SERVER_ERROR),
        pytest.param(
            200,
            b'{"choices": [{"message": "oops"}]}',
            "application/json",
            AttemptOutcome.MALFORMED,
            id="message-is-a-string",
        ),
        pytest.param(
            200,
            b'{"choices": [{"message": {"content": "hi"}}], "usage": "n/a"}',
            "application/json",
            AttemptOutcome.MALFORMED,
            id="usage-is-a-string",
        ),
        pytest.param(
            500,
            b'{"error": {"message": {"detail": "boom"}}}',
            "application/json",
            AttemptOutcome.SERVER_ERROR,
            id="error-message-is-an-object",
        ),
    ],
)
async def test_unreadable_answers_of_a_real_http_server_fall_back(
    running, status, body, content_type, outcome
):
    async with fixed_provider(status, body, content_type) as url:
        result = await served_through_fallback(running, url)

    assert result.status is Status.FALLBACK, result.error
    assert [(a.tier, a.outcome) for a in result.attempts] == [(0, outcome), (1, AttemptOutcome.OK)]
    assert result.provider == SECONDARY[0]

"""Per-agent policy: the workflows an agent may invoke, and its own token budget reserved in the
same step as the session and workflow budgets (both or neither), under 50 concurrent calls."""

from __future__ import annotations

import asyncio

import pytest

from shared import keys
from shared.contracts import BudgetScope, Status
from tests.support.audit import invocation_rows
from tests.support.stack import wait_for

pytestmark = pytest.mark.timeout(120)

AGENT_TOKENS = 2_000
MAX_TOKENS = 100
CALLS = 50


async def ids_in(redis, ledger_keys) -> set[str]:
    """Invocation ids a ledger counts: settled in its window or still reserved."""
    window, reserved = ledger_keys[0], ledger_keys[1]
    members = await redis.zrange(window, 0, -1) + await redis.zrange(reserved, 0, -1)
    return {m.decode() for m in members}


async def used_of(redis, ledger_keys) -> int:
    return int(await redis.hget(ledger_keys[3], "used") or 0)


@pytest.fixture
async def agents_stack(stack):
    policy = stack.policy()
    policy["agents"] = {
        "alice": {"workflows": ["support-triage"], "budget": {"tokens": AGENT_TOKENS, "window_s": 3600}},
        "bob": {"workflows": ["support-triage", "research-summary"]},
    }
    # 50 reservations at once on a shared 2-core machine: give the budget time to answer
    await stack.start(gateway={"control_timeout_s": 15.0})
    await stack.apply(policy)
    return stack


async def test_an_agent_may_only_invoke_its_workflows(agents_stack):
    alice = await agents_stack.client(agent="alice")
    bob = await agents_stack.client(agent="bob")

    refused = await alice.invoke("research-summary", "hello")
    allowed = await bob.invoke("research-summary", "hello")

    assert refused.status is Status.ERROR
    assert refused.error.code == "agent_not_allowed"
    assert refused.attempts == []
    assert allowed.status in (Status.SUCCESS, Status.FALLBACK)
    assert (await agents_stack.sim.control.stats())["total"] == 1  # the refused one called nobody


async def test_the_agent_budget_holds_under_50_concurrent_invocations(agents_stack, redis):
    env = agents_stack.env
    alice = await agents_stack.client(agent="alice")

    results = await asyncio.gather(
        *(
            alice.invoke("support-triage", f"request {i}", session_id="s-50", max_tokens=MAX_TOKENS)
            for i in range(CALLS)
        )
    )

    admitted = {r.invocation_id for r in results if r.status in (Status.SUCCESS, Status.FALLBACK)}
    refused = [r for r in results if r.status is Status.BUDGET_EXCEEDED]
    assert len(admitted) + len(refused) == CALLS, [r.error for r in results]
    assert 0 < len(admitted) < CALLS
    assert {r.error.details[0]["scope"] for r in refused} == {BudgetScope.AGENT_TOKENS.value}

    agent_ledger = keys.budget_agent_tokens(env, "alice")
    session_ledger = keys.budget_session(env, "support-triage", "s-50")

    async def all_settled():
        return not await redis.zcard(agent_ledger[1]) and not await redis.zcard(session_ledger[1])

    await wait_for(all_settled, timeout=30, message="every reservation to be settled")
    # both or neither: exactly the admitted invocations are on the agent's and the session's ledger
    assert await ids_in(redis, agent_ledger) == admitted
    assert await ids_in(redis, session_ledger) == admitted
    used = await used_of(redis, agent_ledger)
    assert used == await used_of(redis, session_ledger)
    assert 0 < used <= AGENT_TOKENS  # the limit held
    # another agent is not limited by alice's budget
    bob = await agents_stack.client(agent="bob")
    assert (await bob.invoke("support-triage", "still open?", session_id="s-bob")).status is Status.SUCCESS


async def test_an_agent_spend_ceiling_refuses_before_the_call(stack):
    policy = stack.policy()
    policy["agents"] = {"carol": {"workflows": ["support-triage"], "budget": {"usd_per_day": 0.0001}}}
    await stack.start()
    await stack.apply(policy)
    carol = await stack.client(agent="carol")

    result = await carol.invoke("support-triage", "hello", max_tokens=1000)

    assert result.status is Status.BUDGET_EXCEEDED
    (breach,) = result.error.details
    assert breach["scope"] == BudgetScope.AGENT_SPEND.value
    assert result.error.message.startswith("agent carol daily spend ceiling of $0.0001")
    assert (await stack.sim.control.stats())["total"] == 0


async def test_a_refused_agent_cannot_overwrite_the_audit_row_of_another_agents_invocation(agents_stack):
    bob = await agents_stack.client(agent="bob")
    alice = await agents_stack.client(agent="alice")
    served = await bob.invoke("research-summary", "bob's question", invocation_id="bobs-1")
    assert served.status in (Status.SUCCESS, Status.FALLBACK)
    await wait_for(lambda: invocation_rows(agents_stack, "bobs-1"), message="bob's audit row")

    # alice may not invoke research-summary; she reuses bob's invocation id
    refused = await alice.invoke("research-summary", "bob's question", invocation_id="bobs-1")
    assert refused.status is Status.ERROR
    assert refused.error.code == "idempotency_conflict"
    # a later invocation of bob's is recorded after anything alice's request could have emitted
    marker = await bob.invoke("research-summary", "marker", invocation_id="bobs-2")
    await wait_for(lambda: invocation_rows(agents_stack, marker.invocation_id), message="the marker's row")

    [row] = await invocation_rows(agents_stack, "bobs-1")
    assert (row["agent"], row["status"], row["error_code"]) == ("bob", served.status.value, None)
    assert row["prompt_tokens"] == served.usage.prompt_tokens
    assert (await agents_stack.sim.control.stats())["total"] == 2

"""Idempotency: the invocation id is the key, bound to the request that first used it. A retry
gets the first result and calls nothing; a duplicate in flight or a conflicting request
reserves nothing, takes no router tier, and leaves the first invocation fully metered."""

from __future__ import annotations

import asyncio

from services.budget import limits
from services.budget.ledgers import LedgerStore
from shared.contracts import Status
from tests.support.fallback import PRIMARY, model_state, provider_status, steady_minute
from tests.support.stack import wait_for

WORKFLOW = "support-triage"


async def session_ledger(stack, redis, session_id: str):
    """(used, reserved) of the session's token ledger and of the workflow's spend ledger."""
    budget = stack["budget"].config.active.policy.workflows[WORKFLOW].budget
    store = LedgerStore(redis)
    return [
        (b.used, b.reserved)
        for b in [await store.balance(x) for x in limits.ledgers(stack.env, WORKFLOW, budget, session_id)]
    ]


async def primary_requests(stack) -> int:
    return model_state(await provider_status(stack), *PRIMARY).requests_this_minute


async def first_at_provider(stack, count: int = 1) -> None:
    async def reached() -> bool:
        return (await stack.sim.control.stats())["total"] == count

    await wait_for(reached, message="the first call at the provider")


async def test_a_retry_with_the_same_id_gets_the_first_reply_and_no_second_call(running):
    client = await running.client()
    first = await client.invoke("support-triage", "hello", invocation_id="retry-me-1")
    # The reply is stored before it is sent: a retry right after it is a replay, never in flight.
    again = await client.invoke("support-triage", "hello", invocation_id="retry-me-1")

    assert again.model_dump() == first.model_dump()
    assert (await running.sim.control.stats())["total"] == 1


async def test_a_duplicate_in_flight_is_refused_and_the_first_stays_fully_metered(running, redis):
    await running.sim.control.set_latency(1500)
    client = await running.client()
    first = asyncio.ensure_future(
        client.invoke(WORKFLOW, "slow", invocation_id="twice-1", session_id="s-dup", timeout=10)
    )
    await first_at_provider(running)
    duplicate = await client.invoke(WORKFLOW, "slow", invocation_id="twice-1", session_id="s-dup")

    assert duplicate.status is Status.ERROR
    assert (duplicate.error.code, duplicate.error.retryable) == ("duplicate_in_flight", True)
    done = await first
    assert done.status is Status.SUCCESS
    used = done.usage.prompt_tokens + done.usage.completion_tokens
    assert used > 0
    assert (await running.sim.control.stats())["total"] == 1

    async def settled():
        (session, spend) = await session_ledger(running, redis, "s-dup")
        return session == (used, 0) and spend[1] == 0 and spend[0] > 0

    await wait_for(settled, message=f"the session ledger to hold the first call's {used} tokens")


async def test_the_same_id_with_another_request_is_a_conflict_and_gets_nothing_of_the_first(running):
    client = await running.client()
    first = await client.invoke(WORKFLOW, "the first prompt", invocation_id="shared-id", agent="alpha")
    assert first.status is Status.SUCCESS

    others = [
        dict(messages="another prompt", agent="alpha"),
        dict(messages="the first prompt", agent="beta"),
        dict(messages="the first prompt", agent="alpha", session_id="other-session"),
        dict(messages="the first prompt", agent="alpha", metadata={"k": "v"}),
        dict(messages="the first prompt", agent="alpha", max_tokens=7),
    ]
    for other in others:
        reply = await client.invoke(WORKFLOW, invocation_id="shared-id", **other)
        assert reply.status is Status.ERROR, other
        assert (reply.error.code, reply.error.retryable) == ("idempotency_conflict", False), other
        assert reply.output is None and reply.provider is None
    same = await client.invoke(WORKFLOW, "the first prompt", invocation_id="shared-id", agent="alpha")

    assert same.model_dump() == first.model_dump()
    assert (await running.sim.control.stats())["total"] == 1


async def test_a_conflict_while_the_first_is_in_flight_leaves_it_alone(running, redis):
    await running.sim.control.set_latency(1500)
    client = await running.client()
    first = asyncio.ensure_future(
        client.invoke(WORKFLOW, "mine", invocation_id="busy-id", session_id="s-c", timeout=10)
    )
    await first_at_provider(running)
    other = await client.invoke(WORKFLOW, "yours", invocation_id="busy-id", session_id="s-c")

    assert other.error.code == "idempotency_conflict"
    done = await first
    used = done.usage.prompt_tokens + done.usage.completion_tokens

    async def settled():
        return (await session_ledger(running, redis, "s-c"))[0] == (used, 0)

    await wait_for(settled, message="the first call metered in full")


async def test_refusals_replays_and_duplicates_take_no_router_tier(running, redis):
    client = await running.client()
    await steady_minute(redis, margin_s=20)
    before = await primary_requests(running)
    served = await client.invoke(WORKFLOW, "served", invocation_id="q-1")
    assert served.status is Status.SUCCESS
    assert await primary_requests(running) == before + 1

    # A refusal by the per-invocation ceiling: the prompt alone is over 4000 tokens.
    refused = [await client.invoke(WORKFLOW, "word " * 5000) for _ in range(5)]
    assert {r.status for r in refused} == {Status.BUDGET_EXCEEDED}
    assert await primary_requests(running) == before + 1
    replays = [await client.invoke(WORKFLOW, "served", invocation_id="q-1") for _ in range(5)]
    assert all(r.model_dump() == served.model_dump() for r in replays)
    conflicts = [await client.invoke(WORKFLOW, "other", invocation_id="q-1") for _ in range(3)]
    assert {c.error.code for c in conflicts} == {"idempotency_conflict"}
    assert await primary_requests(running) == before + 1

    await running.sim.control.set_latency(1500)
    slow = asyncio.ensure_future(client.invoke(WORKFLOW, "slow", invocation_id="q-2", timeout=10))
    await first_at_provider(running, count=2)
    duplicates = [await client.invoke(WORKFLOW, "slow", invocation_id="q-2") for _ in range(5)]
    assert {d.error.code for d in duplicates} == {"duplicate_in_flight"}
    assert (await slow).status is Status.SUCCESS

    assert await primary_requests(running) == before + 2
    assert (await running.sim.control.stats())["total"] == 2


async def test_a_stored_reply_whose_settle_was_lost_is_settled_by_its_replay(running, redis, monkeypatch):
    """The gateway died between storing the reply and sending its settle (the settle is dropped
    here): the reservation is still held; the agent's retry is a replay, and it settles."""
    gateway = running["gateway"]
    lost = []

    async def dropped(settle, lifetime_s):
        lost.append(settle)

    monkeypatch.setattr(gateway.settler, "send", dropped)
    client = await running.client()
    first = await client.invoke(WORKFLOW, "hello", invocation_id="lost-settle", session_id="s-lost")
    assert first.status is Status.SUCCESS and len(lost) == 1
    (session, spend) = await session_ledger(running, redis, "s-lost")
    assert session[0] == 0 and session[1] > 0 and spend[1] > 0  # held, never settled
    monkeypatch.undo()

    again = await client.invoke(WORKFLOW, "hello", invocation_id="lost-settle", session_id="s-lost")
    assert again.model_dump() == first.model_dump()
    used = first.usage.prompt_tokens + first.usage.completion_tokens

    async def settled():
        (session, spend) = await session_ledger(running, redis, "s-lost")
        return session == (used, 0) and spend[1] == 0 and spend[0] > 0

    await wait_for(settled, message=f"the replay to settle the {used} tokens once")
    assert (await running.sim.control.stats())["total"] == 1

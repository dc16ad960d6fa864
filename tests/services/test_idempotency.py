"""The invocation id is the idempotency key: a retry gets the first result and calls nothing."""

from __future__ import annotations

import asyncio

from shared.contracts import Status
from tests.support.stack import wait_for


async def test_a_retry_with_the_same_id_gets_the_first_reply_and_no_second_call(running):
    client = await running.client()
    first = await client.invoke("support-triage", "hello", invocation_id="retry-me-1")

    async def replayed():
        # The stored result is written in a batch just after the first reply; until then a
        # retry is told the first one is still in flight.
        again = await client.invoke("support-triage", "hello", invocation_id="retry-me-1")
        if again.status is Status.ERROR:
            assert again.error.code == "duplicate_in_flight"
            return None
        return again

    again = await wait_for(replayed, message="the stored reply")
    assert again.model_dump() == first.model_dump()
    assert (await running.sim.control.stats())["total"] == 1


async def test_a_duplicate_while_the_first_is_in_flight_is_refused(running):
    await running.sim.control.set_latency(800)
    client = await running.client()
    first = asyncio.ensure_future(
        client.invoke("support-triage", "slow", invocation_id="twice-1", session_id="s-dup")
    )

    async def first_reached_the_provider() -> bool:
        return (await running.sim.control.stats())["total"] == 1

    await wait_for(first_reached_the_provider, message="the first call at the provider")
    duplicate = await client.invoke("support-triage", "slow", invocation_id="twice-1", session_id="s-dup")

    assert duplicate.status is Status.ERROR
    assert (duplicate.error.code, duplicate.error.retryable) == ("duplicate_in_flight", True)
    assert (await first).status is Status.SUCCESS
    assert (await running.sim.control.stats())["total"] == 1

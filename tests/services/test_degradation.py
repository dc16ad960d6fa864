"""One behaviour per dependency down, for a fail-closed and an allow workflow: the rows of
docs/degradation.md. Servers that go down are the test's own (never the machine's)."""

from __future__ import annotations

import signal
from dataclasses import replace

import pytest

from shared import migrate
from shared.contracts import Status
from tests.support.audit import recorded_events
from tests.support.helpers import sample
from tests.support.servers import PostgresServer, RedisServer
from tests.support.stack import Stack, copy_policy, wait_for

CLOSED = "support-triage"  # budget.on_unavailable fail_closed, degradation fail_closed
ALLOW = "research-summary"  # budget.on_unavailable allow, degradation passthrough


async def _calls(stack) -> int:
    return (await stack.sim.control.stats())["total"]


@pytest.fixture
async def own_redis(tmp_path):
    server = await RedisServer(tmp_path).start()
    yield server
    await server.stop()


@pytest.fixture
async def own_postgres(tmp_path):
    server = await PostgresServer(tmp_path).start()
    await migrate.apply(server.url, verbose=False)
    yield server
    await server.destroy()


@pytest.fixture
async def own_stack(infra, env_name, simulator, tmp_path):
    """A Stack on servers this test owns; they are up again (or the test failed) before cleanup."""
    stacks: list[Stack] = []

    def make(**infra_overrides) -> Stack:
        s = Stack(replace(infra, **infra_overrides), env_name, copy_policy(tmp_path), simulator)
        stacks.append(s)
        return s

    yield make
    for s in stacks:
        await s.close()


async def test_budget_down_fail_closed_refuses_before_the_provider_and_allow_proceeds(stack):
    await stack.start("router", "recorder", "gateway")  # no budget service at all
    sb = await stack.client()
    before = await _calls(stack)

    closed = await sb.invoke(CLOSED, "hello", session_id="s-1", timeout=20)
    assert closed.status is Status.ERROR and closed.error.code == "budget_unavailable"
    assert await _calls(stack) == before

    allowed = await sb.invoke(ALLOW, "hello", session_id="s-1", timeout=20)
    assert allowed.status is Status.SUCCESS
    assert await _calls(stack) == before + 1
    events = await wait_for(
        lambda: recorded_events(stack, "budget_unavailable", allowed.invocation_id), message="the event"
    )
    assert events[0]["mode"] == "allow"

    await stack.start("budget")  # recovers by itself: the next call is metered again
    assert (await sb.invoke(CLOSED, "again", session_id="s-1", timeout=20)).status is Status.SUCCESS


async def test_recorder_down_invocations_are_answered_and_recorded_when_it_returns(stack):
    await stack.start("router", "budget", "gateway")  # no recorder: events wait in JetStream
    sb = await stack.client()

    results = [await sb.invoke(w, "hello", session_id="s-1") for w in (CLOSED, ALLOW)]
    assert [r.status for r in results] == [Status.SUCCESS, Status.SUCCESS]
    assert await recorded_events(stack, "invocation", results[0].invocation_id) == []

    await stack.start("recorder")
    for r in results:
        rows = await wait_for(lambda r=r: recorded_events(stack, "invocation", r.invocation_id), timeout=20)
        assert len(rows) == 1


async def test_postgres_down_invocations_are_answered_and_recorded_when_it_returns(own_postgres, own_stack):
    pg = own_postgres
    stack = own_stack(database_url=pg.url)
    await stack.start()
    sb = await stack.client()
    await pg.stop(signal.SIGKILL)

    results = [await sb.invoke(w, "while the audit log is down", session_id="s-1") for w in (CLOSED, ALLOW)]
    assert [r.status for r in results] == [Status.SUCCESS, Status.SUCCESS]

    await pg.start()  # the recorder retries; JetStream kept the events
    for r in results:
        rows = await wait_for(
            lambda r=r: recorded_events(stack, "invocation", r.invocation_id), timeout=60, interval=0.5
        )
        assert len(rows) == 1


async def test_redis_down_fail_closed_refuses_and_allow_proceeds_on_policy_alone(own_redis, own_stack):
    redis = own_redis
    stack = own_stack(redis_url=redis.url)
    await stack.start()
    sb = await stack.client()
    assert (await sb.invoke(CLOSED, "before", session_id="s-1")).status is Status.SUCCESS
    await redis.stop(signal.SIGKILL)
    before = await _calls(stack)

    closed = await sb.invoke(CLOSED, "budget cannot be checked", session_id="s-1", timeout=20)
    allowed = await sb.invoke(ALLOW, "budget cannot be checked", session_id="s-1", timeout=20)

    assert closed.status is Status.ERROR and closed.error.code == "budget_unavailable"
    assert allowed.status is Status.SUCCESS  # planned from policy alone, unmetered
    assert (allowed.provider, allowed.model) == ("anthropic-sim", "claude-sim-sonnet")
    assert await _calls(stack) == before + 1
    await wait_for(lambda: recorded_events(stack, "budget_unavailable", allowed.invocation_id), timeout=20)

    await redis.start()  # append-only file: the ledgers are back as they were
    again = await wait_for(
        lambda: _succeeds(sb, CLOSED), timeout=30, interval=0.5, message="fail_closed to serve again"
    )
    assert again.status is Status.SUCCESS


async def test_redis_down_runs_an_allow_workflow_without_de_duplication_and_counts_it(own_redis, own_stack):
    redis = own_redis
    stack = own_stack(redis_url=redis.url)
    await stack.start()
    sb = await stack.client()
    await redis.stop(signal.SIGKILL)
    claims = sample("switchboard_idempotency_unavailable_total", operation="claim")
    stores = sample("switchboard_idempotency_unavailable_total", operation="store")
    before = await _calls(stack)
    try:
        first, again = [
            await sb.invoke(ALLOW, "no claim", session_id="s-1", invocation_id="undeduplicated", timeout=20)
            for _ in range(2)
        ]
    finally:
        await redis.start()

    assert (first.status, again.status) == (Status.SUCCESS, Status.SUCCESS)
    assert await _calls(stack) == before + 2  # the retry ran again: nothing de-duplicated it
    assert sample("switchboard_idempotency_unavailable_total", operation="claim") == claims + 2
    assert sample("switchboard_idempotency_unavailable_total", operation="store") == stores


async def _succeeds(sb, workflow):
    result = await sb.invoke(workflow, "after", session_id="s-1", timeout=20)
    return result if result.status is Status.SUCCESS else None

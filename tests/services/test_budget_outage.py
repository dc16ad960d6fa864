"""The budget with its Redis killed (SIGKILL) and restarted: each workflow's `on_unavailable`
mode applies, the budget answers at once instead of hanging, and it recovers by itself.

The test runs a redis-server of its own on a free port; the machine's Redis is never touched.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import nats
import pytest
import redis.asyncio as aioredis

from shared import codec, names
from shared.contracts import Reservation, ReserveRequest, Status
from tests.support.audit import recorded_events
from tests.support.helpers import free_port, sample
from tests.support.stack import wait_for

CLOSED = "support-triage"  # budget.on_unavailable: fail_closed
ALLOW = "research-summary"  # budget.on_unavailable: allow


class RedisServer:
    """A throwaway redis-server process that can be killed and started again on its port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        probe = aioredis.from_url(self.url)
        try:
            await wait_for(lambda: _pings(probe), message=f"redis-server on port {self.port}")
        finally:
            await probe.aclose()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


async def _pings(client) -> bool:
    try:
        return await client.ping()
    except aioredis.ConnectionError:
        return False


@pytest.fixture
async def own_redis():
    server = RedisServer()
    await server.start()
    yield server
    await server.kill()


@pytest.fixture
async def outage(stack, own_redis):
    """Every service, the budget on its own Redis; one invocation of each mode works first."""
    await stack.start("recorder", "router", "gateway")
    await stack.start("budget", budget={"redis_url": own_redis.url})
    client = await stack.client()
    for workflow in (CLOSED, ALLOW):
        assert (await client.invoke(workflow, "hi", session_id="s-1")).status is Status.SUCCESS
    await own_redis.kill()
    await stack.sim.control.reset()
    return client


async def test_the_budget_answers_at_once_when_redis_is_dead(stack, outage):
    nc = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    errors_before = sample("switchboard_budget_store_errors_total", operation="reserve")
    request = ReserveRequest(
        invocation_id=uuid.uuid4().hex, workflow=CLOSED, session_id="s-1", estimated_prompt_tokens=8
    )
    try:
        t0 = time.monotonic()
        msg = await nc.request(names.budget_reserve(stack.env), codec.encode(request), timeout=5)
        elapsed = time.monotonic() - t0
    finally:
        await nc.close()

    reservation = codec.decode(msg.data, Reservation)
    assert not reservation.allowed and reservation.error.code == "budget_unavailable"
    assert elapsed < 0.5
    assert sample("switchboard_budget_store_errors_total", operation="reserve") == errors_before + 1


async def test_fail_closed_refuses_without_the_provider_and_recovers_by_itself(stack, outage, own_redis):
    result = await outage.invoke(CLOSED, "hi", session_id="s-1")

    assert result.status is Status.ERROR
    assert result.error.code == "budget_unavailable"
    assert (await stack.sim.control.stats())["total"] == 0

    await own_redis.start()
    await wait_for(
        lambda: _succeeds(outage, CLOSED), timeout=10, interval=0.1, message="the budget to recover"
    )


async def test_allow_proceeds_and_emits_budget_unavailable(stack, outage):
    result = await outage.invoke(ALLOW, "hi", session_id="s-1")

    assert result.status is Status.SUCCESS
    assert (await stack.sim.control.stats())["total"] == 1
    (event,) = await wait_for(
        lambda: recorded_events(stack, "budget_unavailable", result.invocation_id),
        message="the budget_unavailable event",
    )
    assert event["workflow"] == ALLOW and event["mode"] == "allow" and event["session_id"] == "s-1"


async def _succeeds(client, workflow: str) -> bool:
    return (await client.invoke(workflow, "hi", session_id="s-1")).status is Status.SUCCESS

"""Events survive NATS (and so JetStream) being down longer than any retry: the gateway keeps
what it could not publish in its local spool and publishes it when NATS is back, and every
invocation the gateway answered is in the audit log once, with no second provider call.
The NATS server is the test's own, stopped and started again on its port."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import asyncpg
import pytest

from shared.contracts import Status
from tests.support.helpers import sample
from tests.support.servers import NatsServer
from tests.support.stack import Stack, copy_policy, new_env, wait_for

# Longer than the 30 s the bus used to retry before dropping an event; CI may shorten it.
OUTAGE_S = float(os.environ.get("SB_TEST_OUTAGE_S", "35"))


def answered() -> float:
    """Invocations the gateway (in this process) answered with success at the primary."""
    labels = {"workflow": "support-triage", "status": "success", "provider": "openai-sim"}
    return sample("switchboard_invocations_total", model="gpt-sim-large", **labels)


@pytest.fixture
async def own(tmp_path):
    server = await NatsServer(tmp_path).start()
    yield server
    await server.stop()


@pytest.fixture
async def stack_on_own_nats(infra, simulator, tmp_path, own):
    s = Stack(dataclasses.replace(infra, nats_url=own.url), new_env(), copy_policy(tmp_path), simulator)
    yield s
    if own.proc is None:  # cleanup needs the test's NATS up
        await own.start()
    await s.close()


async def audit_statuses(stack, ids: list[str]) -> dict[str, str]:
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        rows = await conn.fetch(
            "select invocation_id, status from invocations"
            " where env = $1 and invocation_id = any($2::text[])",
            stack.env,
            ids,
        )
    finally:
        await conn.close()
    return {r["invocation_id"]: r["status"] for r in rows}


@pytest.mark.timeout(OUTAGE_S + 90)
async def test_events_of_answered_invocations_survive_a_nats_outage(stack_on_own_nats, own):
    stack = await stack_on_own_nats.start()
    client = await stack.client()
    first = await client.invoke("support-triage", "before the outage", invocation_id="before-1")
    assert first.status is Status.SUCCESS
    await wait_for(lambda: audit_statuses(stack, ["before-1"]), message="the first audit row")

    # Five invocations held at the provider; NATS goes down while they are there, so the gateway
    # answers them with nowhere to publish their events.
    await stack.sim.control.set_latency(1500)
    ids = [f"during-{i}" for i in range(5)]
    calls = [
        asyncio.ensure_future(client.invoke("support-triage", i, invocation_id=i, timeout=120)) for i in ids
    ]

    async def all_at_provider() -> bool:
        return (await stack.sim.control.stats())["total"] == 6

    await wait_for(all_at_provider, message="five calls at the provider")
    before = answered()
    await own.stop()
    # The gateway answers all five (whether the replies reach the agent is not the point) with
    # nowhere to publish their events.
    await wait_for(lambda: answered() == before + 5, timeout=30, message="five answers")
    lost = sample("switchboard_event_publish_failures_total", kind="invocation")
    await asyncio.sleep(OUTAGE_S)
    assert sample("switchboard_event_publish_failures_total", kind="invocation") == lost
    spool = stack["gateway"].bus.spool
    assert len(spool) >= 5
    await own.start()

    statuses = await wait_for(
        lambda: _complete(audit_statuses(stack, ids), len(ids)), timeout=60, message="every audit row"
    )
    assert set(statuses.values()) == {"success"}
    await wait_for(lambda: len(spool) == 0, timeout=30, message="the spool to empty")
    for call in calls:  # the agents may or may not have had their replies: that is not the point
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    assert (await stack.sim.control.stats())["total"] == 6


async def _complete(coro, n: int):
    found = await coro
    return found if len(found) == n else None

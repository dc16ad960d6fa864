"""A gateway killed (SIGKILL) right after it answered: the retry of that invocation is a replay
of the stored reply, with no second provider call, the call stays metered, and its audit row
is written."""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import pytest

from services.budget import limits
from services.budget.ledgers import LedgerStore
from shared.contracts import Status
from shared.policy import load_dir_or_raise
from tests.support.helpers import SIM_KEYS, ServiceProcess, infra_env
from tests.support.stack import wait_for

WORKFLOW = "support-triage"


@pytest.fixture
async def procs(stack, tmp_path):
    started: list[ServiceProcess] = []
    env = infra_env(
        stack.infra,
        SB_ENV=stack.env,
        SB_CONFIG_DIR=str(stack.policy_dir),
        SB_SIMULATOR_URL=stack.sim.url,
        **SIM_KEYS,
    )

    async def start(*names: str) -> dict[str, ServiceProcess]:
        batch = [ServiceProcess(name, env, tmp_path / str(len(started))) for name in names]
        for p in batch:
            p.log_path.parent.mkdir(exist_ok=True)
        started.extend(batch)
        for p in batch:
            await p.start()
        await asyncio.gather(*(p.wait_ready() for p in batch))
        return {p.name: p for p in batch}

    try:
        yield start
    finally:
        await asyncio.gather(*(p.stop() for p in started), return_exceptions=True)


async def test_a_gateway_killed_after_replying_never_calls_the_provider_again(stack, procs, redis):
    await procs("router", "budget", "recorder")
    gateway = (await procs("gateway"))["gateway"]
    client = await stack.client()

    first = await client.invoke(WORKFLOW, "answer me once", invocation_id="kill-1", session_id="s-kill")
    gateway.signal(signal.SIGKILL)  # at once: nothing after the reply gets a chance to run
    assert await gateway.wait(10) == -signal.SIGKILL
    assert first.status is Status.SUCCESS
    await procs("gateway")

    again = await client.invoke(
        WORKFLOW, "answer me once", invocation_id="kill-1", session_id="s-kill", timeout=20
    )

    assert again.model_dump() == first.model_dump()
    assert (await stack.sim.control.stats())["total"] == 1
    budget = load_dir_or_raise(stack.policy_dir).workflows[WORKFLOW].budget
    session = limits.ledgers(stack.env, WORKFLOW, budget, "s-kill")[0]
    used = first.usage.prompt_tokens + first.usage.completion_tokens

    async def metered() -> bool:
        balance = await LedgerStore(redis).balance(session)
        return (balance.used, balance.reserved) == (used, 0)

    await wait_for(metered, message=f"the session ledger to hold {used} tokens, none reserved")
    rows = await wait_for(lambda: invocation_events(stack, "kill-1"), message="the audit trail")
    assert [(r["kind"], r["status"]) for r in rows] == [("invocation", "success")]


async def invocation_events(stack, invocation_id: str) -> list:
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        return await conn.fetch(
            "select kind, body->>'status' as status from events"
            " where env = $1 and invocation_id = $2 and kind = 'invocation'",
            stack.env,
            invocation_id,
        )
    finally:
        await conn.close()

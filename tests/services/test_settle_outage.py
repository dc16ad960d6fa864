"""A call that finishes while the budget's Redis is unreachable (a proxy the test cuts) is
metered once Redis is back: the budget refuses the settle and the gateway sends it again."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from services.budget import limits
from services.budget.ledgers import LedgerStore
from shared.contracts import Status
from shared.policy import load_dir_or_raise
from tests.support.stack import wait_for
from tests.support.tcpproxy import TcpProxy

WORKFLOW = "support-triage"


async def ledger(stack, redis, session_id: str) -> tuple[int, int]:
    """(used, reserved) of the session's token ledger, read from Redis directly."""
    budget = load_dir_or_raise(stack.policy_dir).workflows[WORKFLOW].budget
    balance = await LedgerStore(redis).balance(limits.ledgers(stack.env, WORKFLOW, budget, session_id)[0])
    return balance.used, balance.reserved


async def held_at_provider(stack, client, session_id: str) -> asyncio.Future:
    await stack.sim.control.set_latency(1500)
    call = asyncio.ensure_future(client.invoke(WORKFLOW, "metered late", session_id=session_id, timeout=20))

    async def at_provider() -> bool:
        return (await stack.sim.control.stats())["total"] == 1

    await wait_for(at_provider, message="the call at the provider")
    return call


async def test_a_call_that_ends_while_the_budgets_redis_is_unreachable_is_settled_after(stack, redis):
    parts = urlsplit(stack.infra.redis_url)
    proxy = await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379).start()
    try:
        await stack.start("router", "recorder", "gateway")
        await stack.start("budget", budget={"redis_url": f"redis://127.0.0.1:{proxy.port}{parts.path}"})
        client = await stack.client()
        call = await held_at_provider(stack, client, "s-redis")
        await proxy.cut()

        result = await call
        assert result.status is Status.SUCCESS
        used = result.usage.prompt_tokens + result.usage.completion_tokens
        await asyncio.sleep(1.5)  # a few refused settles
        assert (await ledger(stack, redis, "s-redis"))[0] == 0
        await proxy.start()

        await wait_for(
            lambda: _is(ledger(stack, redis, "s-redis"), (used, 0)), timeout=20, message=f"{used} settled"
        )
    finally:
        await proxy.cut()


async def _is(coro, expected) -> bool:
    return await coro == expected

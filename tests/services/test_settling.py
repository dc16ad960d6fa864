"""services/gateway/settling.py: a settle reaches the ledgers even when no budget replica was
there to take it when the call ended; a repeat changes nothing."""

from __future__ import annotations

import asyncio

from shared import codec, names
from shared.contracts import BudgetShowReply, BudgetShowRequest, Status
from tests.support.stack import wait_for

WF = "support-triage"


async def _session(stack, sb, session: str) -> BudgetShowReply:
    request = BudgetShowRequest(workflow=WF, session_id=session)
    msg = await sb._nc.request(names.budget_show(stack.env), codec.encode(request), timeout=5)
    return codec.decode(msg.data, BudgetShowReply)


async def test_a_settle_sent_while_the_budget_is_down_is_applied_when_it_returns(running):
    sb = await running.client()
    fault = await running.sim.control.add_fault("latency", latency_ms=1500)
    before = (await running.sim.control.stats())["total"]
    call = asyncio.create_task(sb.invoke(WF, "held at the provider", session_id="s-settle", timeout=20))
    await wait_for(lambda: _provider_called(running, before), message="the call to reach the provider")
    await running.stop("budget")  # reserved; the settle will find nobody
    assert not call.done()

    result = await call
    assert result.status is Status.SUCCESS
    await running.sim.control.remove_fault(fault)
    await asyncio.sleep(0)  # the first settle went out to no one
    await running.start("budget")

    used = result.usage.prompt_tokens + result.usage.completion_tokens
    reply = await wait_for(
        lambda: _settled(running, sb, used), timeout=15, message=f"the session to hold {used} tokens"
    )
    assert (reply.session.reserved, reply.session.in_flight) == (0, 0)
    assert running["gateway"].settler.pending == {}


async def _provider_called(stack, before: int) -> bool:
    return (await stack.sim.control.stats())["total"] > before


async def _settled(stack, sb, used: int) -> BudgetShowReply | None:
    reply = await _session(stack, sb, "s-settle")
    return reply if reply.session and reply.session.used == used else None

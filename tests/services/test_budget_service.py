"""Budgets through the real services: refused before the provider, recorded, shared safely by
replicas, settled to actual usage, released on expiry, and changed live."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import nats
import pytest

from services.budget.service import BudgetService
from services.gateway.service import GatewayService
from shared import codec, names
from shared.contracts import BudgetShowReply, BudgetShowRequest, Reservation, ReserveRequest, Status
from tests.support.audit import recorded_events
from tests.support.stack import wait_for

WF = "support-triage"  # ceiling 4000 tokens, session 100000 tokens/h, $200 a day; fail_closed
PROMPT = "hi"  # estimated at 8 prompt tokens


async def set_budget(stack, workflow: str = WF, **budget) -> None:
    policy = stack.policy()
    policy["workflows"][workflow]["budget"].update(budget)
    if budget.get("reservation_ttl_s", 300) < 30:  # the policy requires it to outlast the chain
        for tier in policy["workflows"][workflow]["tiers"]:
            tier["timeout_ms"] = 400
    await stack.apply(policy)


@pytest.fixture
async def nc(stack):
    conn = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    yield conn
    await conn.close()


async def ask(nc, subject: str, body, reply_model):
    msg = await nc.request(subject, codec.encode(body), timeout=5)
    return codec.decode(msg.data, reply_model)


async def show(stack, nc, session_id: str | None = None, workflow: str = WF) -> BudgetShowReply:
    reply = await ask(
        nc,
        names.budget_show(stack.env),
        BudgetShowRequest(workflow=workflow, session_id=session_id),
        BudgetShowReply,
    )
    assert reply.error is None, reply.error
    return reply


BREACHES = {
    "invocation": (
        {},
        {"max_tokens": 5000},
        {"estimated_tokens": 5008, "ceiling": 4000, "remaining": 3992},
        "per-invocation ceiling of 4000 tokens exceeded by 1008",
    ),
    "session": (
        {"session": {"tokens": 500, "window_s": 3600}},
        {"max_tokens": 1000, "session_id": "s-1"},
        {"estimated_tokens": 1008, "ceiling": 500, "remaining": 500},
        "session s-1 budget of 500 tokens per 3600 s exceeded by 508",
    ),
    "spend": (  # worst case at the dearest tier, claude-sim-sonnet: 8 x $3 + 1000 x $15 per Mtok
        {"usd_per_day": 0.001},
        {"max_tokens": 1000},
        {"estimated_tokens": 1008, "ceiling": 0.001, "remaining": 0.001},
        "daily spend ceiling of $0.001 exceeded by $0.014024",
    ),
}


@pytest.mark.parametrize("scope", BREACHES)
async def test_a_breach_never_reaches_the_provider_and_is_recorded(running, scope):
    budget, request, figures, message = BREACHES[scope]
    if budget:
        await set_budget(running, **budget)
    client = await running.client()

    result = await client.invoke(WF, PROMPT, **request)

    assert result.status is Status.BUDGET_EXCEEDED
    assert result.error.code == "budget_exceeded"
    assert message in result.error.message
    (breach,) = result.error.details
    assert breach == {"scope": scope, "message": result.error.message, **figures}
    assert (await running.sim.control.stats())["total"] == 0
    (event,) = await wait_for(
        lambda: recorded_events(running, "budget_breach", result.invocation_id), message="the breach event"
    )
    assert event["workflow"] == WF and event["session_id"] == request.get("session_id")
    assert {k: event[k] for k in breach} == breach


async def test_concurrent_invocations_on_one_session_never_pass_its_budget(stack, nc):
    # 50 reservations at once on a loaded two-core machine: an answer past the gateway's default
    # 1 s control timeout would be budget_unavailable, not what this test is about
    slow_ok = {"control_timeout_s": 15.0}
    running = await stack.start(gateway=slow_ok)
    worst = 8 + 100  # estimate + max_tokens: what each invocation reserves
    await set_budget(running, session={"tokens": 10 * worst, "window_s": 3600})
    async with contextlib.AsyncExitStack() as replicas:  # a second gateway and budget replica
        for service_cls, name in ((BudgetService, "budget"), (GatewayService, "gateway")):
            settings = running.settings(name, **(slow_ok if name == "gateway" else {}))
            service = await service_cls(settings).start()
            replicas.push_async_callback(service.shutdown)
        await running.sim.control.set_latency(1500)  # every reserve comes before any settle
        client = await running.client()

        results = await asyncio.gather(
            *(client.invoke(WF, PROMPT, session_id="s-conc", max_tokens=100) for _ in range(50))
        )

        admitted = [r for r in results if r.status is Status.SUCCESS]
        refused = [r for r in results if r.status is Status.BUDGET_EXCEEDED]
        assert len(admitted) == 10 and len(refused) == 40
        assert {r.error.details[0]["scope"] for r in refused} == {"session"}
        assert (await running.sim.control.stats())["total"] == 10

        actual = sum(r.usage.prompt_tokens + r.usage.completion_tokens for r in admitted)
        settled = await wait_for(
            lambda: _settled(running, nc, "s-conc"), message="every reservation to be settled"
        )
        assert settled.used == actual < 10 * worst
        print(
            f"\nbudget concurrency: admitted {len(admitted)} of 50, refused {len(refused)}; "
            f"reserved {10 * worst} tokens (10 x {worst}), settled {actual}, "
            f"released {10 * worst - actual}"
        )

        await running.sim.control.set_latency(0)
        again = await client.invoke(WF, PROMPT, session_id="s-conc", max_tokens=100)
        assert again.status is Status.SUCCESS


async def _settled(stack, nc, session_id: str):
    session = (await show(stack, nc, session_id)).session
    return session if session.in_flight == 0 and session.reserved == 0 and session.used else None


async def test_a_ceiling_changed_in_the_live_policy_applies_to_the_next_call(running):
    client = await running.client()
    assert (await client.invoke(WF, PROMPT, max_tokens=1000)).status is Status.SUCCESS

    await set_budget(running, max_tokens_per_invocation=500)
    refused = await client.invoke(WF, PROMPT, max_tokens=1000)
    assert refused.status is Status.BUDGET_EXCEEDED
    assert refused.error.details[0]["ceiling"] == 500

    await set_budget(running, max_tokens_per_invocation=500, session={"tokens": 2000, "window_s": 60})
    assert (await client.invoke(WF, PROMPT, max_tokens=400, session_id="s-2")).status is Status.SUCCESS
    await set_budget(running, max_tokens_per_invocation=500, session={"tokens": 100, "window_s": 60})
    refused = await client.invoke(WF, PROMPT, max_tokens=400, session_id="s-2")
    assert refused.status is Status.BUDGET_EXCEEDED
    assert refused.error.details[0]["scope"] == "session"


async def test_a_reservation_whose_settle_never_comes_is_released_after_its_ttl(running, nc):
    await set_budget(running, session={"tokens": 100, "window_s": 3600}, reservation_ttl_s=1)

    async def reserve() -> Reservation:
        request = ReserveRequest(
            invocation_id=uuid.uuid4().hex,
            workflow=WF,
            session_id="s-ttl",
            estimated_prompt_tokens=0,
            max_tokens=100,
        )
        return await ask(nc, names.budget_reserve(running.env), request, Reservation)

    held = await reserve()
    assert held.allowed and held.reserved_tokens == 100
    refused = await reserve()
    assert not refused.allowed and refused.breach.scope == "session"
    assert (await show(running, nc, "s-ttl")).session.in_flight == 1

    await wait_for(lambda: _released(running, nc, "s-ttl"), timeout=5, message="the reservation to expire")
    assert (await reserve()).allowed


async def _released(stack, nc, session_id: str) -> bool:
    session = (await show(stack, nc, session_id)).session
    return session.in_flight == 0 and session.remaining == session.limit


async def test_settle_records_actual_tokens_and_cost(running, nc):
    await set_budget(running, session={"tokens": 10_000, "window_s": 3600}, usd_per_day=1)
    client = await running.client()

    result = await client.invoke(WF, PROMPT, session_id="s-cost", max_tokens=100)

    assert result.status is Status.SUCCESS and result.model == "gpt-sim-large"
    reply = await wait_for(lambda: _settled_reply(running, nc, "s-cost"), message="the settle")
    usage = result.usage
    assert reply.session.used == usage.prompt_tokens + usage.completion_tokens
    cost = (usage.prompt_tokens * 2.5 + usage.completion_tokens * 10) / 1e6  # gpt-sim-large prices
    assert reply.spend_today.used == pytest.approx(cost, abs=1e-6)
    assert reply.spend_today.reserved == 0 and reply.spend_today.limit == 1


async def _settled_reply(stack, nc, session_id: str):
    reply = await show(stack, nc, session_id)
    return reply if reply.session.used and not reply.session.in_flight else None


async def test_the_estimate_counts_as_the_densest_tokenizer_of_the_workflows_tiers(running):
    policy = running.policy()
    policy["providers"]["anthropic-sim"]["models"]["claude-sim-sonnet"]["tokenizer"] = "dense"
    policy["workflows"][WF]["budget"]["max_tokens_per_invocation"] = 200
    await running.apply(policy)
    client = await running.client()

    # 300 bytes: 107 tokens by the default estimator (167 with max_tokens fits), 157 when dense
    result = await client.invoke(WF, "x" * 300, max_tokens=60)

    assert result.status is Status.BUDGET_EXCEEDED
    assert result.error.details[0]["estimated_tokens"] == 157 + 60

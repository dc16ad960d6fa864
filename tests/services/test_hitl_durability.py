"""Reviews survive crashes and replicas: SIGKILL of both gateway replicas and the hitl service while
reviews are pending loses none, and after restart each decision resumes its own invocation exactly
once; two hitl replicas sweeping the same expired reviews act on each exactly once."""

from __future__ import annotations

import asyncio
import signal

import pytest

from services.hitl.service import HitlService
from shared.contracts import Status
from tests.support.fallback import extra_service, sim_count
from tests.support.helpers import SIM_KEYS, ServiceProcess, free_port, infra_env, sample
from tests.support.hitl import (
    REFUND,
    add_reviewer,
    api,
    audit,
    results,
    wait_all_acted,
    write_review_policy,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def procs(stack, tmp_path):
    """Start service processes of the test's environment (each with its own log folder)."""
    started: list[ServiceProcess] = []
    env = infra_env(
        stack.infra,
        SB_ENV=stack.env,
        SB_CONFIG_DIR=str(stack.policy_dir),
        SB_SIMULATOR_URL=stack.sim.url,
        SB_API_PORT=str(free_port()),
        SB_SWEEP_INTERVAL_S="0.2",
        **SIM_KEYS,
    )

    async def start(name: str) -> ServiceProcess:
        folder = tmp_path / f"{name}-{len(started)}"
        folder.mkdir()
        proc = ServiceProcess(name, env, folder)
        started.append(proc)
        await proc.start()
        await proc.wait_ready()
        return proc

    start.api_port = int(env["SB_API_PORT"])
    try:
        yield start
    finally:
        await asyncio.gather(*(p.stop() for p in started), return_exceptions=True)


async def kill(*processes: ServiceProcess) -> None:
    for p in processes:
        p.signal(signal.SIGKILL)
    for p in processes:
        assert await p.wait() == -signal.SIGKILL


async def test_sigkill_of_gateways_and_hitl_mid_review_loses_nothing_and_resumes_each_once(stack, procs):
    await stack.start("router", "budget")
    gateways = [await procs("gateway"), await procs("gateway")]
    hitl = await procs("hitl")
    sb = await stack.client()
    held = [
        await sb.invoke("refunds", f"Refund order {i}.", metadata=REFUND, invocation_id=f"inv-kill-{i}")
        for i in range(4)
    ]
    assert {h.status for h in held} == {Status.PENDING_REVIEW}

    await kill(*gateways, hitl)
    hitl = await procs("hitl")
    token = await add_reviewer(stack, "alice", "payments")
    async with results(stack) as published:
        async with api(stack, token, port=procs.api_port) as http:
            listed = (await http.get("/v1/queues/payments/reviews")).json()
            assert sorted(r["invocation_id"] for r in listed) == [f"inv-kill-{i}" for i in range(4)]
            for h in held[:2]:  # decided while no gateway runs: kept until one does
                assert (await http.post(f"/v1/reviews/{h.review_id}/approve", json={})).status_code == 200
            gateways = [await procs("gateway"), await procs("gateway")]
            for h in held[2:]:
                assert (await http.post(f"/v1/reviews/{h.review_id}/approve", json={})).status_code == 200
        for h in held:
            final = await published.wait(h.invocation_id, timeout=30)
            assert final.status is Status.SUCCESS and final.review_id == h.review_id

        await wait_all_acted(stack, [h.invocation_id for h in held])
        for h in held:
            assert len(published.of(h.invocation_id)) == 1
            assert [a["event"] for a in await audit(stack, h.invocation_id)].count("acted") == 1
    assert await sim_count(stack, "openai-sim") == 4


async def test_two_hitl_replicas_act_on_each_expired_review_exactly_once(stack):
    write_review_policy(stack, payments={"timeout_s": 1, "on_timeout": "reject", "escalate_to": None})
    await stack.start(hitl={"sweep_interval_s": 0.05})
    sb = await stack.client()
    before = sample("switchboard_hitl_decisions_total", queue="payments", decision="timeout", by="system")
    async with extra_service(HitlService(stack.settings("hitl", sweep_interval_s=0.05))):
        async with results(stack) as published:
            held = await asyncio.gather(
                *(sb.invoke("refunds", f"Refund {i}.", metadata=REFUND) for i in range(12))
            )
            for h in held:
                assert (await published.wait(h.invocation_id)).status is Status.REJECTED

            await wait_all_acted(stack, [h.invocation_id for h in held])
            for h in held:
                events = [a["event"] for a in await audit(stack, h.invocation_id)]
                assert events == ["requested", "timed_out", "acted"], events
                assert len(published.of(h.invocation_id)) == 1
    after = sample("switchboard_hitl_decisions_total", queue="payments", decision="timeout", by="system")
    assert after - before == 12
    assert await sim_count(stack, "openai-sim") == 0

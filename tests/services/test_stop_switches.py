"""Stop switches: `sbctl workflow pause` and `sbctl agent pause` refuse new invocations on every
gateway replica within a second, while invocations already running finish; both are recorded
in the audit log with the operator who pulled them."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from services.gateway.service import GatewayService
from shared.contracts import Status
from tests.support.fallback import sim_count, wait_events
from tests.support.helpers import run_sbctl
from tests.support.stack import wait_for

pytestmark = pytest.mark.timeout(90)
OPERATOR = {"SB_OPERATOR": "alice"}


async def two_gateways(stack) -> list[GatewayService]:
    """The stack's gateway plus a second replica in the same queue group."""
    second = await GatewayService(stack.settings("gateway")).start()
    stack.services["gateway-2"] = second
    return [stack["gateway"], second]


async def test_workflow_pause_stops_every_replica_mid_load_and_in_flight_work_finishes(running):
    await running.apply()
    replicas = await two_gateways(running)
    client = await running.client()
    # Hold the first tier for 1.5 s so that invocations are in flight when the switch is pulled.
    await running.sim.control.add_fault("latency", provider="openai-sim", latency_ms=1500)
    in_flight = [
        asyncio.create_task(client.invoke("support-triage", f"before {i}", session_id=f"s{i}"))
        for i in range(6)
    ]

    async def all_held() -> bool:
        return await sim_count(running, "openai-sim") == 6

    await wait_for(all_held, message="every invocation to be held at the provider")

    code, out, err = await run_sbctl(
        running.infra,
        "workflow",
        "pause",
        "support-triage",
        "--reason",
        "runaway loop",
        "--env",
        running.env,
        extra_env=OPERATOR,
    )
    pulled = time.monotonic()

    assert code == 0, out + err
    assert out.startswith(f"paused: workflow support-triage in env {running.env} by alice (runaway loop)")
    await wait_for(
        lambda: all("support-triage" in r.switches.current.workflows for r in replicas),
        timeout=1.0,
        message="every replica to see the pause within a second",
    )
    assert time.monotonic() - pulled < 1.0
    refused = await asyncio.gather(*(client.invoke("support-triage", f"after {i}") for i in range(10)))
    assert {(r.status, r.error.code) for r in refused} == {(Status.REJECTED, "workflow_paused")}
    assert "runaway loop" in refused[0].error.message and "alice" in refused[0].error.message
    finished = await asyncio.gather(*in_flight)
    assert [r.status for r in finished] == [Status.SUCCESS] * 6, "in-flight work must finish"
    assert await sim_count(running, "openai-sim") == 6, "a refused invocation reached a provider"
    other = await client.invoke("research-summary", "still running")
    assert other.status in (Status.SUCCESS, Status.FALLBACK)

    levers = await wait_events(running, "lever")
    assert [(e["lever"], e["target"], e["reason"], e["by"], e["by_source"]) for e in levers] == [
        ("workflow.pause", "support-triage", "runaway loop", "alice", "configured")
    ]
    recorded = await wait_events(running, "invocation", 17)
    statuses = [e["status"] for e in recorded if e["workflow"] == "support-triage"]
    assert statuses.count("rejected") == 10 and statuses.count("success") == 6

    code, out, err = await run_sbctl(
        running.infra, "workflow", "status", "--env", running.env, "--json", extra_env=OPERATOR
    )
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)["switches"]}
    assert rows["support-triage"]["state"] == "paused" and rows["support-triage"]["by"] == "alice"
    assert rows["research-summary"]["state"] == "running"

    code, out, err = await run_sbctl(
        running.infra, "workflow", "resume", "support-triage", "--env", running.env, extra_env=OPERATOR
    )
    assert code == 0, err
    await wait_for(lambda: all(not r.switches.current.workflows for r in replicas), timeout=1.0)
    again = await client.invoke("support-triage", "resumed")
    assert again.status is Status.SUCCESS
    assert [e["lever"] for e in await wait_events(running, "lever", 2)] == [
        "workflow.pause",
        "workflow.resume",
    ]


async def test_agent_pause_refuses_that_agent_in_any_workflow_and_session(running):
    await running.apply()
    client = await running.client()

    code, out, err = await run_sbctl(
        running.infra, "agent", "pause", "bot-7", "--reason", "new session per call", "--env", running.env
    )
    assert code == 0, out + err
    gateway = running["gateway"]
    await wait_for(lambda: "bot-7" in gateway.switches.current.agents, timeout=1.0)
    before = await sim_count(running, "openai-sim") + await sim_count(running, "anthropic-sim")

    for workflow in ("support-triage", "research-summary"):
        for session in ("a", "b", None):
            result = await client.invoke(workflow, "hi", session_id=session, agent="bot-7")
            assert (result.status, result.error.code) == (Status.REJECTED, "agent_paused")
    assert await sim_count(running, "openai-sim") + await sim_count(running, "anthropic-sim") == before
    other = await client.invoke("support-triage", "hi", agent="bot-8")
    assert other.status is Status.SUCCESS

    code, _, err = await run_sbctl(running.infra, "agent", "resume", "bot-7", "--env", running.env)
    assert code == 0, err
    await wait_for(lambda: not gateway.switches.current.agents, timeout=1.0)
    assert (await client.invoke("support-triage", "hi", agent="bot-7")).status is Status.SUCCESS
    levers = await wait_events(running, "lever", 2)
    assert [(e["lever"], e["target"], e["by_source"]) for e in levers] == [
        ("agent.pause", "bot-7", "os"),
        ("agent.resume", "bot-7", "os"),
    ]


async def test_pausing_an_unknown_workflow_is_refused(running):
    await running.apply()
    code, _, err = await run_sbctl(
        running.infra, "workflow", "pause", "no-such", "--reason", "typo", "--env", running.env
    )
    assert code == 1
    assert err.strip() == "error [not_found]: no workflow named 'no-such' in policy version 1"
    assert not running["gateway"].switches.current.workflows

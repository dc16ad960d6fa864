"""`sbctl provider probe`: real calls to a blocked provider through the gateway's adapter, each
recorded in the audit log as a probe, charged to no budget, changing no routing state; exit 1
while the provider still fails, 0 once every probe answers."""

from __future__ import annotations

import json

import pytest

from tests.support.fallback import events, provider, provider_status, sbctl_json, sim_count, wait_events
from tests.support.helpers import run_sbctl

pytestmark = pytest.mark.timeout(90)
OPERATOR = {"SB_OPERATOR": "oncall-jane"}


async def probe(stack, *extra: str) -> tuple[int, str, str]:
    return await run_sbctl(
        stack.infra, "provider", "probe", "openai-sim", *extra, "--env", stack.env, extra_env=OPERATOR
    )


async def test_probe_reaches_a_blocked_provider_records_each_call_and_charges_nothing(running):
    await running.apply()
    code, _, err = await run_sbctl(
        running.infra, "provider", "block", "openai-sim", "--reason", "outage", "--env", running.env
    )
    assert code == 0, err
    await running.sim.control.add_fault("503", provider="openai-sim")  # until removed
    before = await sim_count(running, "openai-sim", "gpt-sim-large")

    code, out, err = await probe(running, "--count", "2")

    assert code == 1, out + err
    assert out.splitlines()[-1] == "NOT RECOVERED: 0/2 probe calls answered; keep it blocked"
    assert "provider BLOCKED (outage)" in out.splitlines()[0]
    assert (
        await sim_count(running, "openai-sim", "gpt-sim-large") == before + 2
    )  # the block did not stop them

    await running.sim.control.clear_faults()
    code, out, err = await probe(running, "--count", "3", "--json")

    assert code == 0, out + err
    report = json.loads(out)
    assert (report["provider"], report["model"], report["recovered"]) == ("openai-sim", "gpt-sim-large", True)
    assert report["blocked"] == "outage"
    assert [c["outcome"] for c in report["calls"]] == ["ok", "ok", "ok"]
    assert all(c["latency_ms"] > 0 for c in report["calls"])
    assert await sim_count(running, "openai-sim", "gpt-sim-large") == before + 5

    recorded = await wait_events(running, "probe", 5)
    assert sorted(e["outcome"] for e in recorded) == ["ok", "ok", "ok", "server_error", "server_error"]
    assert {(e["provider"], e["by"], e["service"]) for e in recorded} == {
        ("openai-sim", "oncall-jane", "gateway")
    }
    assert {c["invocation_id"] for c in report["calls"]} <= {e["invocation_id"] for e in recorded}
    # nothing else: no invocation, no attempt, no budget ledger touched, the block still on
    assert [e for e in await events(running) if e["kind"] not in ("probe", "provider_block", "config")] == []
    shown = await sbctl_json(running, "budget", "show", "--workflow", "support-triage")
    assert (shown["spend_today"]["used"], shown["spend_today"]["reserved"]) == (0, 0)
    state = provider(await provider_status(running), "openai-sim")
    assert (state.blocked, state.consecutive_failures, state.circuit_open_ms) == ("outage", 0, 0)

    code, out, err = await run_sbctl(
        running.infra, "trace", report["calls"][0]["invocation_id"], "--env", running.env
    )
    assert code == 0, out + err
    assert "probe of openai-sim/gpt-sim-large by oncall-jane: ok" in out


async def test_probe_of_an_unknown_provider_is_refused_by_name(running):
    await running.apply()

    code, out, err = await run_sbctl(running.infra, "provider", "probe", "nope", "--env", running.env)

    assert code == 1, out + err
    assert err.startswith("error [not_found]: no provider named 'nope'")
    for bad, option in ((("--timeout", "0"), "--timeout"), (("--reason", "x" * 201), "--reason")):
        code, out, err = await probe(running, *bad)
        assert code == 2, out + err  # the command line is wrong: a coded error, not a traceback
        assert err.startswith(f"error [invalid_request]: {option}: "), err
    assert await sim_count(running, "openai-sim") == 0

"""`sbctl drill provider-outage` as an operator runs it: a subprocess against a running
environment, driving openai-sim's workflows with invocations that avoid it and reading the
fallbacks back from the audit log; it passes when every workflow survives and fails, naming the
problem, when the only fallback is broken too. Live traffic keeps using the provider during the
drill, and a drill that is killed leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from shared import keys
from shared.contracts import Status
from tests.support.fallback import events, provider, provider_status, sim_count
from tests.support.helpers import infra_env, run_sbctl
from tests.support.stack import REPO, wait_for

DRILL = ("drill", "provider-outage", "--provider", "openai-sim", "--invocations", "10")
SLO_MS = 60_000


async def apply_with_slack(running) -> None:
    """The test policy with every tier's p99 SLO at a minute: these tests are about what the drill
    does and reports, and a busy machine must not turn a pass into a p99 verdict."""
    policy = running.policy()
    for workflow in policy["workflows"].values():
        for tier in workflow["tiers"]:
            if tier["slo_p99_ms"] is not None:
                tier["slo_p99_ms"] = SLO_MS
    await running.apply(policy)


async def test_drill_passes_with_fallbacks_recorded_and_unblocks(running):
    await apply_with_slack(running)

    code, out, err = await run_sbctl(running.infra, *DRILL, "--env", running.env, timeout=60)

    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith(
        f"drill provider-outage: the drill's invocations avoided openai-sim in env {running.env}"
    )
    assert lines[-1] == "PASS"
    triage = next(line.split() for line in lines if line.startswith("support-triage "))
    # workflow, invocations, completed, completion, fallbacks_recorded, fallback_tier, p99, slo, verdict
    assert triage[1:6] == ["10", "10", "100%", "10", "anthropic-sim/claude-sim-sonnet"]
    assert triage[-1] == "pass"
    assert await sim_count(running, "openai-sim") == 0, "a drill invocation called the drilled provider"
    assert provider(await provider_status(running), "openai-sim").blocked is None, "left blocked"
    fallbacks = await events(running, kind="fallback")
    drilled = [e for e in fallbacks if e["workflow"] == "support-triage"]
    assert len(drilled) == 10
    assert {(e["from_provider"], e["to_provider"], e["outcome"], e["source"]) for e in drilled} == {
        ("openai-sim", "anthropic-sim", "skipped", "drill")
    }


async def test_drill_json_reports_each_workflow(running):
    await apply_with_slack(running)

    code, out, err = await run_sbctl(running.infra, *DRILL, "--env", running.env, "--json", timeout=60)

    assert code == 0, out + err
    report = json.loads(out)
    assert report["ok"] is True
    assert (report["provider"], report["env"]) == ("openai-sim", running.env)
    rows = {r["workflow"]: r for r in report["workflows"]}
    assert set(rows) == {"support-triage", "research-summary", "refunds"}
    assert rows["support-triage"]["fallbacks_recorded"] == 10
    assert rows["support-triage"]["slo_p99_ms"] == SLO_MS
    # research-summary starts at anthropic-sim: blocking openai-sim costs it nothing
    assert rows["research-summary"]["fallbacks_recorded"] == 0
    assert rows["research-summary"]["completed"] == 10
    assert all(r["verdict"] == "pass" for r in rows.values())


async def test_drill_fails_naming_the_completion_problem_when_the_fallback_is_broken(running):
    await apply_with_slack(running)
    await running.sim.control.add_fault("500", provider="anthropic-sim")  # until removed

    code, out, err = await run_sbctl(running.infra, *DRILL, "--env", running.env, "--json", timeout=60)

    assert code == 1, out + err
    report = json.loads(out)
    assert report["ok"] is False
    rows = {r["workflow"]: r for r in report["workflows"]}
    triage = rows["support-triage"]
    assert triage["completed"] == 0
    assert triage["verdict"].startswith("completion 0% ("), triage["verdict"]
    assert rows["research-summary"]["verdict"].startswith("completion 0% (")
    assert await sim_count(running, "openai-sim") == 0
    assert provider(await provider_status(running), "openai-sim").blocked is None, "left blocked"


async def test_drill_verdict_names_the_error_code_of_the_failed_invocations(running):
    await apply_with_slack(running)
    await running.sim.control.add_fault("500", provider="anthropic-sim")

    code, out, err = await run_sbctl(running.infra, *DRILL, "--env", running.env, "--json", timeout=60)

    assert code == 1, out + err
    triage = next(r for r in json.loads(out)["workflows"] if r["workflow"] == "support-triage")
    assert "all_tiers_failed" in triage["verdict"], triage["verdict"]


async def test_drill_fail_is_printed_for_people_too(running):
    await apply_with_slack(running)
    await running.sim.control.add_fault("500", provider="anthropic-sim")

    code, out, err = await run_sbctl(running.infra, *DRILL, "--env", running.env, timeout=60)

    assert code == 1, out + err
    assert out.splitlines()[-1].startswith("FAIL: ")
    assert "completion 0%" in out


async def test_drill_without_an_applied_version_says_so(running):
    code, _, err = await run_sbctl(running.infra, *DRILL, "--env", running.env, timeout=60)

    assert code == 1
    assert "no policy version is applied" in err
    assert "sbctl config apply" in err


async def test_drill_leaves_an_operator_block_in_place(running):
    await apply_with_slack(running)
    code, _, err = await run_sbctl(
        running.infra, "provider", "block", "openai-sim", "--reason", "real outage", "--env", running.env
    )
    assert code == 0, err

    code, out, err = await run_sbctl(running.infra, *DRILL, "--env", running.env, timeout=60)

    assert code == 0, out + err
    assert provider(await provider_status(running), "openai-sim").blocked == "real outage"


async def test_live_traffic_keeps_using_the_provider_while_the_drill_runs(running):
    await apply_with_slack(running)
    await running.sim.control.add_fault("latency", provider="anthropic-sim", latency_ms=300)
    client = await running.client()
    drill = asyncio.create_task(run_sbctl(running.infra, *DRILL, "--env", running.env, timeout=90))
    # The drill is an sbctl subprocess: its interpreter start-up is slow on a busy machine.
    await wait_for(
        lambda: sim_count(running, "anthropic-sim"), timeout=60, message="the drill to be under way"
    )

    live = await asyncio.gather(*(client.invoke("support-triage", f"live {i}") for i in range(5)))

    assert not drill.done(), "the drill ended before live traffic was sent"
    assert {(r.status, r.provider) for r in live} == {(Status.SUCCESS, "openai-sim")}
    code, out, err = await drill
    assert code == 0, out + err
    assert await sim_count(running, "openai-sim") == 5  # exactly the live invocations


async def test_a_killed_drill_leaves_no_block_behind(running, redis):
    await apply_with_slack(running)
    await running.sim.control.add_fault("latency", provider="anthropic-sim", latency_ms=2000)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.sbctl",
        *DRILL,
        "--env",
        running.env,
        cwd=REPO,
        env=infra_env(running.infra),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for(
            lambda: sim_count(running, "anthropic-sim"), timeout=60, message="drill invocations in flight"
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    await running.sim.control.clear_faults()

    assert provider(await provider_status(running), "openai-sim").blocked is None
    assert await redis.hgetall(keys.provider_blocks(running.env)) == {}
    result = await (await running.client()).invoke("support-triage", "after the drill")
    assert (result.status, result.provider) == (Status.SUCCESS, "openai-sim")

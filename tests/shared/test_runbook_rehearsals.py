"""The runbook runs: each incident of docs/runbook.md is staged on a running stack (faults from
the provider simulator, a runaway agent, a review backlog, a held audit write, a replica that
cannot load a version), then the runbook's marked steps are run as written and the outcome is
checked in the state that matters (provider state, simulator request counts, audit rows, review
rows, rollout reports), not only in what the commands print."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from services.recorder.service import audit_lag
from shared.sbctl.stats_cmds import LAG_NOTICE_S
from tests.support.fallback import events, provider, provider_status, sim_count
from tests.support.helpers import ServiceProcess, run_sbctl
from tests.support.hitl import write_review_policy
from tests.support.rollout import replica_env_without, use_variable_without_default
from tests.support.runbook import Rehearsal, steps
from tests.support.stack import wait_for

pytestmark = pytest.mark.timeout(120)

REHEARSED = {
    "provider-outage": ["find", "drill", "block", "watch", "recover"],
    "cost-spike": ["find", "look", "contain", "confirm"],
    "review-queue": ["find", "extend", "reassign"],
    "audit-lag": ["find", "cause", "confirm"],
    "config-rejected": ["find", "rollback"],
}


def test_every_marked_step_is_rehearsed_and_every_rehearsal_is_in_the_runbook():
    assert set(steps()) == {f"{incident}/{step}" for incident, s in REHEARSED.items() for step in s}


def codes(ran) -> list[int]:
    return [r.code for r in ran]


def rows_of(out: str, header: str) -> list[list[str]]:
    """The data rows (split on whitespace) of the table whose header line starts with `header`."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


async def recorded(stack, kind: str, count: int, **match) -> list[dict]:
    """Wait until the audit log holds `count` events of `kind` whose fields match."""

    async def enough():
        found = [e for e in await events(stack, kind=kind) if all(e.get(k) == v for k, v in match.items())]
        return found if len(found) >= count else None

    return await wait_for(enough, timeout=20, interval=0.1, message=f"{count} {kind} events {match}")


async def test_provider_outage(running):
    await running.apply()
    book = Rehearsal(running)
    client = await running.client(agent="triage-bot")
    await running.sim.control.add_fault("503", provider="openai-sim")  # the outage, until removed
    for i in range(6):  # five failures open openai-sim's circuit
        result = await client.invoke("support-triage", f"ticket {i}")
        assert result.status.value == "fallback"
    await recorded(running, "invocation", 6)

    find = await book.run("provider-outage/find")
    assert codes(find) == [0, 0]
    status = find[0].out
    assert "openai-sim" in status and "circuit" in status.lower() and "s left, 5 failures" in status
    assert "6 failing (circuit_open 1, server_error 5)" in find[1].out, find[1].out

    before = await sim_count(running, "openai-sim")
    (drill,) = await book.run("provider-outage/drill")
    assert drill.code == 0, drill.out + drill.err
    assert drill.out.splitlines()[-1] == "PASS"
    assert await sim_count(running, "openai-sim") == before  # the drill avoided the provider
    assert provider(await provider_status(running), "openai-sim").blocked is None  # and changed nothing

    (block,) = await book.run("provider-outage/block")
    assert block.code == 0, block.err
    assert provider(await provider_status(running), "openai-sim").blocked == "INC-123: 5xx from openai-sim"
    for i in range(3):
        assert (await client.invoke("support-triage", f"after the block {i}")).status.value == "fallback"
    assert await sim_count(running, "openai-sim") == before  # blocked: not called at all
    await recorded(running, "fallback", 3, source="blocked")

    (watch,) = await book.run("provider-outage/watch")
    assert watch.code == 0, watch.err
    # the drill's own invocations count as mitigation too
    assert "; 6 mitigated (blocked 3, drill 3)" in watch.out, watch.out

    # the provider still fails: the probe says so, and the block stays
    recover = await book.run("provider-outage/recover")
    assert codes(recover) == [1, 0]
    assert "NOT RECOVERED: 0/5 probe calls answered; keep it blocked" in recover[0].out
    assert "BLOCKED (INC-123" in recover[1].out
    assert provider(await provider_status(running), "openai-sim").blocked is not None
    assert await sim_count(running, "openai-sim") == before + 5  # the probes reached it

    await running.sim.control.clear_faults()  # the provider recovers
    recover = await book.run("provider-outage/recover")
    assert codes(recover) == [0, 0], recover[0].out + recover[0].err
    assert "RECOVERED: 5/5 probe calls answered" in recover[0].out
    assert "unblocked: openai-sim" in recover[0].out
    assert provider(await provider_status(running), "openai-sim").blocked is None
    probes = await recorded(running, "probe", 10, by=book.operator)
    assert sorted({p["outcome"] for p in probes}) == ["ok", "server_error"]
    assert [e for e in await events(running, kind="invocation") if e["agent"] != "sbctl-drill"] != []
    assert not any(e["invocation_id"].startswith("probe-") for e in await events(running, kind="invocation"))


async def test_cost_spike(running):
    await running.apply()
    book = Rehearsal(running)
    normal = await running.client(agent="triage-bot")
    runaway = await running.client(agent="loop-bot")
    for i in range(3):
        await normal.invoke("support-triage", f"ticket {i}", session_id="triage-1", max_tokens=256)
    for i in range(8):  # a new session id on every call: no session budget ever bites
        await runaway.invoke("support-triage", f"again {i}", session_id=uuid.uuid4().hex, max_tokens=3000)
    await recorded(running, "invocation", 11)

    find = await book.run("cost-spike/find")
    assert codes(find) == [0, 0], find[0].err + find[1].err
    agents = rows_of(find[0].out, "WORKFLOW")
    # workflow, agent, invocations, sessions, spend, tokens, max_tokens_p50, max_tokens_max, last_seen
    assert agents[0][:4] == ["support-triage", "loop-bot", "8", "8"]
    assert agents[0][6:8] == ["3000", "3000"]
    assert agents[1][:4] == ["support-triage", "triage-bot", "3", "1"]
    assert agents[1][6:8] == ["256", "256"]
    assert "100,000 tokens per 3600 s, per session id" in find[1].out
    book.values["agent"] = agents[0][1]

    (look,) = await book.run("cost-spike/look")
    assert look.code == 0, look.err
    assert len(rows_of(look.out, "TIME")) == 8

    (contain,) = await book.run("cost-spike/contain")
    assert contain.code == 0, contain.err
    refused = await runaway.invoke("support-triage", "once more", session_id=uuid.uuid4().hex)
    assert (refused.status.value, refused.error.code) == ("rejected", "agent_paused")
    assert (await normal.invoke("support-triage", "business as usual")).status.value == "success"
    await recorded(running, "invocation", 13)

    confirm = await book.run("cost-spike/confirm")
    assert codes(confirm) == [0, 0]
    rejected = rows_of(confirm[0].out, "TIME")
    assert len(rejected) == 1 and "agent_paused" in rejected[0]
    assert "triage-bot" in confirm[1].out


async def test_review_queue(stack):
    write_review_policy(stack, payments={"sla_s": 1})
    await stack.start()
    await stack.apply()
    book = Rehearsal(stack)
    client = await stack.client(agent="refund-bot")
    held = [await client.invoke("refunds", f"Refund order {n}", metadata={"amount": 900}) for n in range(3)]
    assert {r.status.value for r in held} == {"pending_review"}
    ids = [r.review_id for r in held]

    conn = await asyncpg.connect(stack.infra.database_url)
    try:

        async def reviews() -> dict:
            rows = await conn.fetch(
                "select id, queue, extract(epoch from deadline) as deadline from hitl_reviews"
                " where env = $1 and state = 'pending'",
                stack.env,
            )
            return {r["id"]: (r["queue"], float(r["deadline"])) for r in rows}

        before = await reviews()
        assert sorted(before) == sorted(ids)

        find = await book.run("review-queue/find")
        assert codes(find) == [0, 0]
        payments = next(r for r in rows_of(find[0].out, "QUEUE") if r[0] == "payments")
        assert payments[1:3] == ["payments-ops", "3"]
        assert len(rows_of(find[1].out, "REVIEW")) == 3

        (extend,) = await book.run("review-queue/extend")
        assert extend.code == 0, extend.err
        assert extend.out.strip() == "extended 3 pending review(s) in payments by 30m"
        after = await reviews()
        assert all(after[i][1] - before[i][1] == pytest.approx(1800, abs=1) for i in ids)

        reassign = await book.run("review-queue/reassign")
        assert codes(reassign) == [0, 0]
        assert reassign[0].out.strip() == "moved 3 pending review(s) from payments to payments-leads"
        assert {queue for queue, _ in (await reviews()).values()} == {"payments-leads"}
        queues = {r[0]: r for r in rows_of(reassign[1].out, "QUEUE")}
        assert (queues["payments"][2], queues["payments-leads"][2]) == ("0", "3")
    finally:
        await conn.close()


async def test_audit_lag(running):
    await running.apply()
    book = Rehearsal(running)
    client = await running.client(agent="triage-bot")
    await client.invoke("support-triage", "warm up")  # today's partitions exist
    await recorded(running, "invocation", 1)

    holder = await asyncpg.connect(running.infra.database_url)
    try:
        # a session holding the audit tables of this env: reads pass, the recorder's writes wait
        tx = holder.transaction()
        await tx.start()
        for table in ("events", "invocations"):
            name = await holder.fetchval("select audit_table($1, $2)", table, running.env)
            await holder.execute(f'lock table "{name}" in share mode')
        answered = await client.invoke("support-triage", "answered, not yet recorded")
        assert answered.status.value == "success"
        book.values["invocation-id"] = answered.invocation_id
        js = running["recorder"].bus.js
        await wait_for(
            lambda: _behind(js, running.env, LAG_NOTICE_S), timeout=10, message="the audit log to fall behind"
        )

        find = await book.run("audit-lag/find")
        assert codes(find) == [0, 0, 1], [r.err for r in find]
        assert find[0].out.splitlines()[1].startswith("audit log: "), find[0].out
        assert " s behind (" in find[0].out.splitlines()[1]
        assert '"audit_lag": {"pending_events": ' in find[1].out, find[1].out
        assert f"{answered.invocation_id} not recorded yet (audit log " in find[2].err, find[2].err

        cause = await book.run("audit-lag/cause")
        assert codes(cause) == [0, 0], cause[1].err
        assert '"ready": true' in cause[0].out
        assert str(holder.get_server_pid()) in cause[1].out, cause[1].out  # the session to look at

        await tx.rollback()  # whoever held it lets go
    finally:
        await holder.close()
    await wait_for(
        lambda: _has_row(running, answered.invocation_id), timeout=20, message="the recorder to catch up"
    )
    (confirm,) = await book.run("audit-lag/confirm")
    assert confirm.code == 0, confirm.err
    assert f"invocation {answered.invocation_id}" in confirm.out


async def _behind(js, env: str, seconds: float) -> bool:
    pending, age = await audit_lag(js, env)
    return pending > 0 and age >= seconds


async def _has_row(stack, invocation_id: str) -> bool:
    return any(e["invocation_id"] == invocation_id for e in await events(stack, kind="invocation"))


VAR = "SB_REHEARSAL_SIM_ROOT"  # set for the in-process services and the operator, not the process replica


async def test_config_rejected(running, tmp_path, monkeypatch):
    env = replica_env_without(running, VAR)
    monkeypatch.setenv(VAR, running.sim.url)
    replica = await ServiceProcess("router", env, tmp_path).start()
    try:
        await replica.wait_ready()
        apply = ("config", "apply", str(running.policy_dir), "--env", running.env, "--reason")
        code, out, err = await run_sbctl(running.infra, *apply, "good", extra_env={VAR: running.sim.url})
        assert code == 0, out + err
        # someone applies a version that needs a variable the router process does not have
        use_variable_without_default(running, VAR)
        code, out, err = await run_sbctl(
            running.infra, *apply, "new sim root", extra_env={VAR: running.sim.url}
        )
        assert code == 1, out + err
        book = Rehearsal(running)

        find = await book.run("config-rejected/find")
        assert codes(find) == [1, 0], find[0].out
        rejected = [r for r in rows_of(find[0].out, "SERVICE") if r[3] == "rejected"]
        assert len(rejected) == 1 and rejected[0][0] == "router" and VAR in " ".join(rejected[0])
        assert "new sim root" in find[1].out
        book.values["version"] = rejected[0][2]
        assert book.values["version"] == "1"

        (rollback,) = await book.run("config-rejected/rollback")
        assert rollback.code == 0, rollback.out + rollback.err
        assert rollback.out.splitlines()[-1].startswith("rollout: all ")
        assert rollback.out.splitlines()[-1].endswith("run version 3")
    finally:
        await replica.stop()

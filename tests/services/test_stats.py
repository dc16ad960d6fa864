"""sbctl stats and sbctl invocations: figures computed from the audit log by the recorder."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.recorder import store
from shared.contracts import BudgetBreachEvent, InvocationEvent, RateLimitEvent, Status
from tests.support.audit import recorded_events
from tests.support.helpers import run_sbctl, sample
from tests.support.stack import wait_for

pytestmark = pytest.mark.timeout(90)


def envelope(env: str, at: datetime, service: str) -> dict:
    return {
        "env": env,
        "event_id": uuid.uuid4().hex,
        "service": service,
        "ts": at.timestamp(),
        "invocation_id": f"inv-{uuid.uuid4().hex[:10]}",
        "config_version": "1",
    }


def invocation(env: str, at: datetime, **fields) -> InvocationEvent:
    return InvocationEvent(**envelope(env, at, "gateway"), **fields)


def event(env: str, at: datetime, kind: str, workflow: str):
    if kind == "budget_breach":
        return BudgetBreachEvent(
            **envelope(env, at, "budget"),
            workflow=workflow,
            scope="invocation",
            estimated_tokens=9000,
            ceiling=4000,
            remaining=4000,
            message="over the ceiling",
        )
    return RateLimitEvent(
        **envelope(env, at, "router"), workflow=workflow, provider="p", model="m", source="provider_429"
    )


async def sbctl_json(stack, *args: str) -> dict:
    code, out, err = await run_sbctl(stack.infra, *args, "--env", stack.env, "--json")
    assert code == 0, err
    return json.loads(out)


async def test_stats_and_listing_from_recorded_invocations(stack):
    await stack.start("recorder")
    env, now = stack.env, datetime.now(UTC)
    recent = now - timedelta(minutes=10)
    batch = []
    for i in range(1, 101):  # latencies 1..100 ms; 90 successes, 10 fallbacks
        batch.append(
            invocation(
                env,
                recent,
                workflow="triage",
                agent="bot-a" if i <= 60 else "bot-b",
                status="fallback" if i > 90 else "success",
                latency_ms=float(i),
                prompt_tokens=10,
                completion_tokens=5,
                cost_usd=0.001 if i <= 60 else 0.003,
            )
        )
    batch.append(invocation(env, recent, workflow="research", agent="bot-c", status="budget_exceeded"))
    batch += [event(env, recent, "budget_breach", "research") for _ in range(2)]
    batch += [event(env, recent, "rate_limit", "triage") for _ in range(3)]
    old = now - timedelta(hours=3)  # outside a 1h window
    batch.append(invocation(env, old, workflow="triage", agent="bot-a", status="error", latency_ms=1.0))
    batch.append(event(env, old, "rate_limit", "triage"))
    await store.write_batch(stack["recorder"].db, batch)

    stats = await sbctl_json(stack, "stats", "--since", "1h")
    by_name = {w["workflow"]: w for w in stats["workflows"]}
    triage = by_name["triage"]
    assert triage["invocations"] == 100
    assert triage["by_status"] == {"success": 90, "fallback": 10}
    # read from 0.5%-wide buckets: within 0.25% of percentile_cont's 50.5, 95.05, 99.01
    assert triage["latency_ms"] == pytest.approx({"p50": 50.5, "p95": 95.05, "p99": 99.01}, rel=0.0025)
    assert (triage["prompt_tokens"], triage["completion_tokens"]) == (1000, 500)
    assert triage["spend_usd"] == pytest.approx(60 * 0.001 + 40 * 0.003)
    assert triage["fallback_rate"] == 0.1
    assert (triage["budget_breaches"], triage["rate_limit_events"]) == (0, 3)
    assert [(a["agent"], a["invocations"]) for a in triage["top_agents"]] == [("bot-b", 40), ("bot-a", 60)]
    research = by_name["research"]
    assert (research["invocations"], research["by_status"]) == (1, {"budget_exceeded": 1})
    assert research["budget_breaches"] == 2

    wide = await sbctl_json(stack, "stats", "--since", "4h", "--workflow", "triage")
    assert [w["workflow"] for w in wide["workflows"]] == ["triage"]
    assert wide["workflows"][0]["by_status"]["error"] == 1
    assert wide["workflows"][0]["rate_limit_events"] == 4

    listed = await sbctl_json(stack, "invocations", "--since", "1h", "--status", "fallback", "--limit", "4")
    rows = listed["invocations"]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"fallback"}
    assert all(r["agent"] == "bot-b" and r["cost_usd"] == 0.003 for r in rows)
    mine = await sbctl_json(stack, "invocations", "--since", "4h", "--agent", "bot-a", "--workflow", "triage")
    assert len(mine["invocations"]) == 50  # the default limit
    stamps = [r["ts"] for r in mine["invocations"]]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    code, out, err = await run_sbctl(stack.infra, "stats", "--since", "1h", "--env", env)
    assert code == 0, err
    assert "triage" in out and "P95_MS" in out and "10.0%" in out and "top agents by spend" in out


async def test_a_real_invocation_is_priced_in_the_audit_row_and_the_spend_counter(running):
    client = await running.client()
    before = sample(
        "switchboard_spend_usd_total", workflow="support-triage", provider="openai-sim", model="gpt-sim-large"
    )
    result = await client.invoke("support-triage", "price me", agent="pricing-bot")
    assert result.status.value == "success"
    usage = result.usage
    expected = (usage.prompt_tokens * 2.50 + usage.completion_tokens * 10.00) / 1_000_000
    assert expected > 0
    after = sample(
        "switchboard_spend_usd_total", workflow="support-triage", provider="openai-sim", model="gpt-sim-large"
    )
    assert after - before == pytest.approx(expected)
    rows = await wait_for(
        lambda: recorded_events(running, "invocation", result.invocation_id), message="the invocation row"
    )
    assert rows[0]["cost_usd"] == pytest.approx(expected)
    listed = await sbctl_json(running, "invocations", "--agent", "pricing-bot")
    assert [(r["invocation_id"], r["cost_usd"]) for r in listed["invocations"]] == [
        (result.invocation_id, pytest.approx(expected))
    ]


async def test_bad_windows_and_limits_are_refused_with_exit_2(stack):
    for args in (("stats", "--since", "an hour"), ("invocations", "--limit", "0")):
        code, _, err = await run_sbctl(stack.infra, *args, "--env", stack.env)
        assert code == 2 and "invalid" in err


async def test_an_invocation_recorded_again_keeps_one_row_the_newest(stack):
    """Held for review, then answered: two invocation events, one row, counted once."""
    await stack.start("recorder")
    db, env, now = stack["recorder"].db, stack.env, datetime.now(UTC)
    held = invocation(env, now - timedelta(hours=2), workflow="triage", status="pending_review")
    answered = held.model_copy(
        update={"event_id": uuid.uuid4().hex, "ts": now.timestamp(), "status": Status.SUCCESS}
    )
    await store.write_batch(db, [held])
    await store.write_batch(db, [answered])
    quick = invocation(env, now - timedelta(minutes=1), workflow="triage", status="pending_review")
    decided = quick.model_copy(
        update={"event_id": uuid.uuid4().hex, "ts": now.timestamp(), "status": Status.REJECTED}
    )
    await store.write_batch(db, [quick, decided])  # both in one batch

    rows = await db.fetch("select invocation_id, status from invocations where env = $1 order by status", env)
    assert [(r["invocation_id"], r["status"]) for r in rows] == [
        (decided.invocation_id, "rejected"),
        (answered.invocation_id, "success"),
    ]
    stats = await sbctl_json(stack, "stats", "--since", "3h")
    assert stats["workflows"][0]["by_status"] == {"rejected": 1, "success": 1}
    assert await db.fetchval("select count(*) from events where env = $1", env) == 4  # the trail keeps both


async def test_latency_compares_the_last_minutes_with_the_hour_before(stack):
    await stack.start("recorder")
    env, now = stack.env, datetime.now(UTC)
    batch = []
    for i in range(1, 11):  # now: 10 answered at 100..1000 ms, and a fast refusal that is not an answer
        batch.append(
            invocation(
                env, now - timedelta(minutes=5), workflow="triage", status="success", latency_ms=100.0 * i
            )
        )
    batch.append(
        invocation(
            env, now - timedelta(minutes=5), workflow="triage", status="budget_exceeded", latency_ms=0.5
        )
    )
    for i in range(1, 11):  # the hour before: ten times faster
        batch.append(
            invocation(
                env, now - timedelta(minutes=40), workflow="triage", status="fallback", latency_ms=10.0 * i
            )
        )
    batch.append(
        invocation(env, now - timedelta(hours=2), workflow="triage", status="success", latency_ms=1e6)
    )
    await store.write_batch(stack["recorder"].db, batch)

    report = await sbctl_json(stack, "latency", "--last", "15m", "--before", "1h")

    (triage,) = report["workflows"]
    assert (triage["workflow"], triage["answered"], triage["answered_before"]) == ("triage", 10, 10)
    assert float(triage["p50_ms"]) == pytest.approx(550, rel=0.0025)
    assert float(triage["p50_before"]) == pytest.approx(55, rel=0.0025)
    assert triage["p99_change"] == "10.0x"
    code, out, err = await run_sbctl(stack.infra, "latency", "--env", env)
    assert code == 0, err
    assert out.splitlines()[0].endswith("last 15m against the 1h before")
    assert out.splitlines()[1] == "audit log: up to date"


async def test_stats_by_agent_counts_sessions_and_requested_max_tokens(stack):
    await stack.start("recorder")
    env, at = stack.env, datetime.now(UTC) - timedelta(minutes=3)
    batch = [
        invocation(
            env,
            at,
            workflow="triage",
            agent="loop",
            session_id=f"s-{i}",
            status="success",
            max_tokens=3000,
            cost_usd=0.01,
        )
        for i in range(5)
    ]
    batch += [
        invocation(
            env,
            at,
            workflow="triage",
            agent="calm",
            session_id="one",
            status="success",
            max_tokens=m,
            cost_usd=0.001,
        )
        for m in (100, 200, 300)
    ]
    batch.append(invocation(env, at, workflow="triage", agent="calm", session_id="one", status="success"))
    await store.write_batch(stack["recorder"].db, batch)

    stats = await sbctl_json(stack, "stats", "--since", "1h", "--by", "agent")

    rows = [
        (a["agent"], a["invocations"], a["sessions"], a["max_tokens_p50"], a["max_tokens_max"])
        for a in stats["agents"]
    ]
    assert rows == [("loop", 5, 5, 3000, 3000), ("calm", 4, 1, 200, 300)]  # most spend first
    assert stats["agents"][0]["spend_usd"] == pytest.approx(0.05)

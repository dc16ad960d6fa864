"""A gateway killed (SIGKILL) right after it answered: the retry of that invocation is a replay
of the stored reply, with no second provider call, the call stays metered, and its audit row
is written. A gateway killed while the provider holds its call: the id's claim lapses within
its short TTL, the retry calls the provider again, the audit log shows both calls (the dead
one started and never finished), and the ledger charges the invocation once."""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import pytest
import yaml

from services.budget import limits
from services.budget.ledgers import LedgerStore
from shared import keys
from shared.contracts import Status
from shared.policy import load_dir_or_raise
from tests.support.helpers import SIM_KEYS, ServiceProcess, infra_env, run_sbctl
from tests.support.stack import wait_for

WORKFLOW = "support-triage"
CLAIM_TTL_S = 1.0  # the gateways' in-flight claim: lapses this long after its holder dies


@pytest.fixture
async def procs(stack, tmp_path):
    started: list[ServiceProcess] = []
    env = infra_env(
        stack.infra,
        SB_ENV=stack.env,
        SB_CONFIG_DIR=str(stack.policy_dir),
        SB_SIMULATOR_URL=stack.sim.url,
        SB_CLAIM_TTL_S=str(CLAIM_TTL_S),
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


async def test_a_gateway_killed_during_the_provider_call_leaves_a_recorded_orphan_and_a_charge_once(
    stack, procs, redis
):
    workflows = yaml.safe_load((stack.policy_dir / "workflows.yaml").read_text())
    workflows["workflows"][WORKFLOW]["tiers"][0]["timeout_ms"] = 60_000  # held until the kill
    stack.write_policy("workflows.yaml", workflows)
    await procs("router", "budget", "recorder")
    doomed = (await procs("gateway"))["gateway"]
    client = await stack.client()
    await stack.sim.control.add_fault("hang", count=1)  # the first call is held until its caller goes
    ask = dict(invocation_id="orphan-1", session_id="s-orphan")
    held = asyncio.ensure_future(client.invoke(WORKFLOW, "answer me", **ask, timeout=60))
    await wait_for(lambda: _provider_calls(stack, 1), message="the first call held at the provider")
    claim = keys.idempotency(stack.env, "orphan-1")

    # The live gateway keeps its claim alive past the claim's own TTL: a duplicate is refused.
    first_ttl = await redis.pttl(claim)
    assert 0 < first_ttl <= CLAIM_TTL_S * 1000, f"the claim lives {first_ttl} ms, not a heartbeat's TTL"
    await wait_for(lambda: _refreshed(redis, claim, first_ttl), message="the claim's heartbeat")
    duplicate = await client.invoke(WORKFLOW, "answer me", **ask)
    assert duplicate.error is not None and duplicate.error.code == "duplicate_in_flight"

    await procs("gateway")  # the survivor, before the kill
    doomed.signal(signal.SIGKILL)
    assert await doomed.wait(10) == -signal.SIGKILL
    left_ms = await redis.pttl(claim)
    assert 0 < left_ms <= CLAIM_TTL_S * 1000, f"the dead gateway's claim lives {left_ms} ms more"
    await wait_for(
        lambda: _gone(redis, claim), timeout=left_ms / 1000 + 1, message="the dead gateway's claim to lapse"
    )
    again = await client.invoke(WORKFLOW, "answer me", **ask, timeout=20)
    held.cancel()

    assert again.status is Status.SUCCESS, again.error
    assert (await stack.sim.control.stats())["total"] == 2  # the orphaned call and the retry's
    budget = load_dir_or_raise(stack.policy_dir).workflows[WORKFLOW].budget
    used = again.usage.prompt_tokens + again.usage.completion_tokens
    store = LedgerStore(redis)
    charged = limits.ledgers(stack.env, WORKFLOW, budget, "s-orphan")

    async def charged_once() -> bool:
        balances = [await store.balance(x) for x in charged]
        return balances[0].used == used and all(b.reserved == 0 and b.in_flight == 0 for b in balances)

    await wait_for(charged_once, message=f"the session ledger to hold {used} tokens once, nothing reserved")
    started, finished = await wait_for(
        lambda: _attempts(stack, "orphan-1", want_started=2), message="both calls in the audit log"
    )
    orphans = [a for a in started if a not in finished]
    assert len(started) == 2 and len(finished) == 1 and len(orphans) == 1
    code, out, err = await run_sbctl(stack.infra, "trace", "orphan-1", "--env", stack.env)
    assert code == 0, err
    assert out.count("attempt_started") == 2 and out.count("never finished") == 1, out


async def _provider_calls(stack, n: int) -> bool:
    return (await stack.sim.control.stats())["total"] == n


async def _refreshed(redis, key: str, before_ms: int) -> bool:
    return await redis.pttl(key) > before_ms


async def _gone(redis, key: str) -> bool:
    return not await redis.exists(key)


async def _attempts(stack, invocation_id: str, want_started: int):
    """(attempt ids started, attempt ids finished) in the audit log, once `want_started` are in."""
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        rows = await conn.fetch(
            "select kind, body->>'attempt_id' as attempt_id from events"
            " where env = $1 and invocation_id = $2 and kind in ('attempt_started', 'attempt')",
            stack.env,
            invocation_id,
        )
    finally:
        await conn.close()
    started = [r["attempt_id"] for r in rows if r["kind"] == "attempt_started"]
    finished = [r["attempt_id"] for r in rows if r["kind"] == "attempt"]
    return (started, finished) if len(started) >= want_started and finished else None


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

"""The SDK waiting for a review (or fetching the result later), and the on-call levers:
`sbctl hitl queues|pending|extend|reassign|reviewers`, each recorded with who and why, and the
queue gauges."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from shared import codec, names
from shared.contracts import InvokeResult, Status
from tests.support.fallback import sbctl_json, sim_count
from tests.support.helpers import run_sbctl, sample
from tests.support.hitl import REFUND, add_reviewer, api, db_rows, reviews, write_review_policy
from tests.support.stack import operator_connect, wait_for

pytestmark = pytest.mark.timeout(90)


async def approve_soon(stack, token: str, invocation_id: str) -> None:
    async def held() -> list:
        return await reviews(stack, invocation_id)

    [row] = await wait_for(held, message=f"the review of {invocation_id}")
    async with api(stack, token) as http:
        assert (await http.post(f"/v1/reviews/{row['id']}/approve", json={})).status_code == 200


async def test_sdk_waits_for_the_review_or_fetches_the_result_later(stack):
    await stack.start()
    sb = await stack.client()
    token = await add_reviewer(stack, "alice", "payments")

    approving = asyncio.create_task(approve_soon(stack, token, "inv-wait"))
    waited = await sb.invoke(
        "refunds", "Refund.", metadata=REFUND, invocation_id="inv-wait", wait_for_review=20
    )
    await approving
    assert waited.status is Status.SUCCESS and waited.review_id

    still = await sb.invoke(
        "refunds", "Refund.", metadata=REFUND, invocation_id="inv-later", wait_for_review=0.2
    )
    assert still.status is Status.PENDING_REVIEW
    assert (await sb.result("inv-later")).status is Status.PENDING_REVIEW
    approving = asyncio.create_task(approve_soon(stack, token, "inv-later"))
    later = await sb.result("inv-later", wait=20)
    await approving
    assert later.status is Status.SUCCESS and later.review_id == still.review_id

    code, out, err = await run_sbctl(
        stack.infra, "invoke", "refunds", "Refund.", "--meta", "amount=900", "--env", stack.env, "--json"
    )
    assert code == 1 and json.loads(out)["status"] == "pending_review", out + err


async def test_a_caller_told_pending_while_the_result_is_being_recorded_still_hears_it(stack):
    """A caller subscribes to the result, then asks the record. If the result were published
    before it is recorded, a caller that subscribed in between would be told "pending" and never
    hear it. The test holds the record back with a lock on the audit table (seen waiting in
    PostgreSQL), subscribes and asks in that gap, then lets the record through."""
    await stack.start()
    sb = await stack.client()
    token = await add_reviewer(stack, "alice", "payments")
    held = await sb.invoke("refunds", "Refund.", metadata=REFUND, invocation_id="inv-gap")
    assert held.status is Status.PENDING_REVIEW

    await stack.stop("gateway")  # the decision waits for a gateway: nothing is acted on yet
    async with api(stack, token) as http:
        assert (await http.post(f"/v1/reviews/{held.review_id}/approve", json={})).status_code == 200
    lock = await asyncpg.connect(stack.infra.database_url)
    try:
        blocker = lock.transaction()
        await blocker.start()
        await lock.execute("lock table hitl_audit in share mode")  # the "acted" audit row waits
        calls = await sim_count(stack, "openai-sim")
        await stack.start("gateway")

        async def recording_blocked() -> bool:
            await lock.execute("select pg_stat_clear_snapshot()")  # else frozen for the transaction
            return bool(
                await lock.fetch(  # waiting on this lock, not on one of another database's tests
                    "select 1 from pg_stat_activity where pg_backend_pid() = any(pg_blocking_pids(pid))"
                    " and query like 'insert into hitl_audit%'"
                )
            )

        await wait_for(recording_blocked, timeout=30, message="the hitl service recording the result")
        assert await sim_count(stack, "openai-sim") == calls + 1  # the gateway has acted
        late = await operator_connect(stack.infra.nats_url)
        try:
            sub = await late.subscribe(names.result(stack.env, "inv-gap"))
            await late.flush()
            assert (await sb.result("inv-gap")).status is Status.PENDING_REVIEW  # not recorded yet
            await blocker.rollback()
            heard = codec.decode((await sub.next_msg(timeout=15)).data, InvokeResult)
        finally:
            await late.close()
    finally:
        await lock.close()
    assert heard.status is Status.SUCCESS and heard.review_id == held.review_id
    [row] = await reviews(stack, "inv-gap")
    assert row["acted_at"] is not None and row["outcome"] == "success"
    assert (await sb.result("inv-gap")).status is Status.SUCCESS


async def test_queues_pending_extend_and_reassign_are_recorded_with_who_and_why(stack):
    await stack.start()
    sb = await stack.client()
    held = [await sb.invoke("refunds", f"Refund {i}.", metadata=REFUND) for i in range(3)]

    queues = {q["queue"]: q for q in (await sbctl_json(stack, "hitl", "queues"))["queues"]}
    assert queues["payments"]["depth"] == 3 and queues["payments"]["owner"] == "payments-ops"
    assert queues["payments"]["sla_state"] == "ok" and queues["payments-leads"]["sla_state"] == "empty"
    await wait_for(
        lambda: sample("switchboard_hitl_queue_depth", queue="payments") == 3, message="the depth gauge"
    )
    pending = (await sbctl_json(stack, "hitl", "pending", "--queue", "payments"))["reviews"]
    assert [r["review_id"] for r in pending] == [h.review_id for h in held]

    before = {
        r["id"]: r["deadline"] for r in await db_rows(stack, "select * from hitl_reviews where env = $1")
    }
    extended = await sbctl_json(
        stack, "hitl", "extend", "--queue", "payments", "--by", "30m", "--reason", "backlog after outage"
    )
    assert extended["affected"] == 3
    after = {
        r["id"]: r["deadline"] for r in await db_rows(stack, "select * from hitl_reviews where env = $1")
    }
    assert {k: (after[k] - before[k]).total_seconds() for k in before} == dict.fromkeys(before, 1800.0)

    moved = await sbctl_json(
        stack, "hitl", "reassign", "--queue", "payments", "--to", "payments-leads", "--reason", "r"
    )
    assert moved["affected"] == 3
    rows = await db_rows(stack, "select * from hitl_reviews where env = $1")
    assert {r["queue"] for r in rows} == {"payments-leads"}
    ops = await db_rows(
        stack,
        "select event, actor, actor_kind, reason, queue from hitl_audit"
        " where env = $1 and event <> 'requested'",
    )
    assert sorted((o["event"], o["reason"], o["queue"]) for o in ops) == sorted(
        [("extended", "backlog after outage", "payments")] * 3 + [("reassigned", "r", "payments-leads")] * 3
    )
    assert {o["actor_kind"] for o in ops} == {"operator"} and all("@" in o["actor"] for o in ops)

    code, _, err = await run_sbctl(stack.infra, "hitl", "pending", "--queue", "nope", "--env", stack.env)
    assert code == 1 and "not_found" in err


async def test_reviewer_tokens_from_sbctl_are_shown_once_listed_and_revocable(stack):
    await stack.start("hitl")
    issued = await sbctl_json(
        stack, "hitl", "reviewers", "add", "alice", "--queues", "payments,payments-leads"
    )
    token = issued["token"]
    async with api(stack, token) as http:
        assert (await http.get("/v1/queues")).status_code == 200
    listed = (await sbctl_json(stack, "hitl", "reviewers", "list"))["reviewers"]
    assert [(r["name"], r["queues"], r["token"]) for r in listed] == [
        ("alice", ["payments", "payments-leads"], None)
    ]
    again = await run_sbctl(
        stack.infra, "hitl", "reviewers", "add", "alice", "--queues", "payments", "--env", stack.env
    )
    assert again[0] == 1 and "conflict" in again[2]
    await sbctl_json(stack, "hitl", "reviewers", "revoke", "alice")
    async with api(stack, token) as http:
        assert (await http.get("/v1/queues")).status_code == 401
    bad = await run_sbctl(
        stack.infra, "hitl", "reviewers", "add", "bob", "--queues", "nope", "--env", stack.env
    )
    assert bad[0] == 1 and "not_found" in bad[2]


async def test_an_sla_breach_is_counted_once_and_shown_late(stack):
    write_review_policy(stack, payments={"sla_s": 1})
    await stack.start(hitl={"sweep_interval_s": 0.1})
    sb = await stack.client()
    before = sample("switchboard_hitl_sla_breaches_total", queue="payments")
    await sb.invoke("refunds", "Refund.", metadata=REFUND)

    await wait_for(
        lambda: sample("switchboard_hitl_sla_breaches_total", queue="payments") - before == 1,
        message="the SLA breach",
    )
    for _ in range(3):
        await stack["hitl"].sweep()
    assert sample("switchboard_hitl_sla_breaches_total", queue="payments") - before == 1
    queues = {q["queue"]: q for q in (await sbctl_json(stack, "hitl", "queues"))["queues"]}
    assert (queues["payments"]["sla_state"], queues["payments"]["late"]) == ("late", 1)

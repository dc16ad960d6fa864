"""The reviewer API's rules, over real HTTP against a real hitl service: identity only from the
bearer token (401 without one or with a revoked one), 403 outside the reviewer's queues, 404 for
unknown reviews, 409 for decisions on reviews no longer pending; races between reviewers; the
four-eyes rule; escalation that moves the review and restarts its clock."""

from __future__ import annotations

import asyncio

import pytest

from shared.contracts import Status
from tests.support.fallback import sim_count
from tests.support.hitl import (
    REFUND,
    add_reviewer,
    api,
    audit,
    db_rows,
    results,
    reviews,
    wait_acted,
    write_review_policy,
)
from tests.support.stack import wait_for

pytestmark = pytest.mark.timeout(60)
UNKNOWN = "0" * 32


async def held_refund(stack, invocation_id: str | None = None):
    sb = await stack.client()
    held = await sb.invoke("refunds", "Refund, please.", metadata=REFUND, invocation_id=invocation_id)
    assert held.status is Status.PENDING_REVIEW
    return held


async def test_no_token_unknown_token_and_revoked_token_are_401(stack):
    await stack.start("hitl")
    token = await add_reviewer(stack, "alice", "payments")
    async with api(stack) as http:
        missing = await http.get("/v1/queues/payments/reviews")
    async with api(stack, "sbr_not-a-token") as http:
        unknown = await http.get("/v1/queues/payments/reviews")
    async with api(stack, token) as http:
        before = await http.get("/v1/queues/payments/reviews")
        await stack["hitl"].store.revoke_reviewer("alice", "tests")
        after = await http.get("/v1/queues/payments/reviews")

    assert (missing.status_code, unknown.status_code, before.status_code, after.status_code) == (
        401,
        401,
        200,
        401,
    )
    assert missing.json()["error"]["code"] == "unauthorized"
    assert after.headers["www-authenticate"] == "Bearer"
    [row] = await db_rows(stack, "select token_hash from hitl_reviewers where env = $1")
    assert row["token_hash"] != token and len(row["token_hash"]) == 64  # stored hashed, never as issued


async def test_reviewer_outside_the_queue_is_403_and_unknown_review_404(stack):
    await stack.start()
    held = await held_refund(stack)
    outsider = await add_reviewer(stack, "mallory", "payments-leads")

    async with api(stack, outsider) as http:
        listing = await http.get("/v1/queues/payments/reviews")
        shown = await http.get(f"/v1/reviews/{held.review_id}")
        decided = await http.post(f"/v1/reviews/{held.review_id}/approve", json={})
        unknown = await http.post(f"/v1/reviews/{UNKNOWN}/approve", json={})
        no_queue = await http.get("/v1/queues/nope/reviews")

    assert [r.status_code for r in (listing, shown, decided)] == [403, 403, 403]
    assert (unknown.status_code, no_queue.status_code) == (404, 404)
    assert decided.json()["error"]["code"] == "forbidden"
    [row] = await reviews(stack, held.invocation_id)
    assert row["state"] == "pending" and row["approvals"] == "[]"


async def test_listing_is_oldest_first_with_age_and_sla_state(stack):
    await stack.start()
    first = await held_refund(stack)
    second = await held_refund(stack)
    token = await add_reviewer(stack, "alice", "payments")

    async with api(stack, token) as http:
        listed = (await http.get("/v1/queues/payments/reviews")).json()
        shown = (await http.get(f"/v1/reviews/{first.review_id}")).json()

    assert [r["review_id"] for r in listed] == [first.review_id, second.review_id]
    assert listed[0]["age_s"] >= listed[1]["age_s"] >= 0 and listed[0]["sla_state"] == "ok"
    assert shown["messages"] == [{"role": "user", "content": "Refund, please.", "name": None}]
    assert shown["rule"] == "large-refund" and shown["matched"] == {
        "workflow": "refunds",
        "metadata.amount": 900,
    }


async def test_decisions_on_decided_reviews_are_409_and_change_nothing(stack):
    await stack.start()
    held = await held_refund(stack)
    alice = await add_reviewer(stack, "alice", "payments")
    bob = await add_reviewer(stack, "bob", "payments")

    async with results(stack) as published:
        async with api(stack, alice) as http:
            assert (
                await http.post(f"/v1/reviews/{held.review_id}/reject", json={"reason": "no"})
            ).status_code == 200
        await published.wait(held.invocation_id)
        async with api(stack, bob) as http:
            approve = await http.post(f"/v1/reviews/{held.review_id}/approve", json={})
            reject = await http.post(f"/v1/reviews/{held.review_id}/reject", json={"reason": "again"})
            claim = await http.post(f"/v1/reviews/{held.review_id}/claim")

    assert [r.status_code for r in (approve, reject, claim)] == [409, 409, 409]
    assert "already rejected (by alice)" in approve.json()["error"]["message"]
    [row] = await reviews(stack, held.invocation_id)
    assert (row["state"], row["decided_by"], row["reason"]) == ("rejected", "alice", "no")
    assert await sim_count(stack, "openai-sim") == 0


async def test_reject_needs_a_reason(stack):
    await stack.start()
    held = await held_refund(stack)
    token = await add_reviewer(stack, "alice", "payments")
    async with api(stack, token) as http:
        empty = await http.post(f"/v1/reviews/{held.review_id}/reject", json={"reason": ""})
        none = await http.post(f"/v1/reviews/{held.review_id}/reject", json={})
    assert (empty.status_code, none.status_code) == (422, 422)
    assert (await reviews(stack, held.invocation_id))[0]["state"] == "pending"


async def test_two_reviewers_racing_exactly_one_wins_and_the_model_is_called_once(stack):
    await stack.start()
    held = await held_refund(stack)
    tokens = [await add_reviewer(stack, f"r{i}", "payments") for i in range(6)]

    async def decide(i: int, token: str):
        async with api(stack, token) as http:
            if i % 2:
                return await http.post(f"/v1/reviews/{held.review_id}/approve", json={})
            return await http.post(f"/v1/reviews/{held.review_id}/reject", json={"reason": f"r{i}"})

    async with results(stack) as published:
        answers = await asyncio.gather(*(decide(i, t) for i, t in enumerate(tokens)))
        final = await published.wait(held.invocation_id)
        await wait_acted(stack, held.review_id)

    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 409, 409, 409, 409, 409]
    [row] = await reviews(stack, held.invocation_id)
    winner = answers[[a.status_code for a in answers].index(200)].json()
    assert row["decided_by"] == winner["decided_by"]
    assert final.status is (Status.SUCCESS if row["state"] == "approved" else Status.REJECTED)
    assert len(published.of(held.invocation_id)) == 1
    assert await sim_count(stack, "openai-sim") == (1 if row["state"] == "approved" else 0)
    decided = [a for a in await audit(stack, held.invocation_id) if a["event"] == "decided"]
    assert len(decided) == 1


async def test_four_eyes_needs_two_distinct_reviewers(stack):
    write_review_policy(stack, payments={"approvals_required": 2})
    await stack.start()
    held = await held_refund(stack)
    alice = await add_reviewer(stack, "alice", "payments")
    bob = await add_reviewer(stack, "bob", "payments")

    async with results(stack) as published:
        async with api(stack, alice) as http:
            first = await http.post(f"/v1/reviews/{held.review_id}/approve", json={})
            twice = await http.post(f"/v1/reviews/{held.review_id}/approve", json={})
        assert first.json()["state"] == "pending" and first.json()["approvals"] == ["alice"]
        assert twice.status_code == 409
        assert await sim_count(stack, "openai-sim") == 0
        async with api(stack, bob) as http:
            second = await http.post(f"/v1/reviews/{held.review_id}/approve", json={})
        final = await published.wait(held.invocation_id)

    assert second.status_code == 200 and second.json()["state"] == "approved"
    assert second.json()["decided_by"] == "alice,bob"
    assert final.status is Status.SUCCESS
    assert [a["event"] for a in await audit(stack, held.invocation_id)][:3] == [
        "requested",
        "approval",
        "decided",
    ]


async def test_escalation_moves_the_review_restarts_the_clock_and_old_decisions_get_409(stack):
    write_review_policy(stack, payments={"timeout_s": 1}, **{"payments-leads": {"timeout_s": 3600}})
    await stack.start(hitl={"sweep_interval_s": 0.2})
    held = await held_refund(stack)
    first_row = (await reviews(stack, held.invocation_id))[0]
    alice = await add_reviewer(stack, "alice", "payments")

    async def escalated() -> bool:
        return len(await reviews(stack, held.invocation_id)) == 2

    await wait_for(escalated, timeout=10, message="the timeout to escalate the review")
    old, new = await reviews(stack, held.invocation_id)
    assert (old["id"], old["state"], old["escalated_to"]) == (held.review_id, "escalated", new["id"])
    assert (new["queue"], new["state"], new["escalated_from"]) == ("payments-leads", "pending", old["id"])
    clock = (new["deadline"] - new["requested_at"]).total_seconds()
    assert 3599 <= clock <= 3601 and new["requested_at"] >= first_row["deadline"]
    async with api(stack, alice) as http:
        late = await http.post(f"/v1/reviews/{held.review_id}/approve", json={})
        listed = (await http.get("/v1/queues/payments/reviews")).json()
    assert late.status_code == 409 and "escalated away" in late.json()["error"]["message"]
    assert listed == []
    events = [(a["event"], a["actor_kind"], a["queue"]) for a in await audit(stack, held.invocation_id)]
    assert events == [
        ("requested", "system", "payments"),
        ("escalated", "system", "payments"),
        ("requested", "system", "payments-leads"),
    ]
    assert await sim_count(stack, "openai-sim") == 0


async def test_a_reviewer_escalates_by_hand(stack):
    await stack.start()
    held = await held_refund(stack)
    alice = await add_reviewer(stack, "alice", "payments")
    lead = await add_reviewer(stack, "lee", "payments-leads")
    async with api(stack, alice) as http:
        moved = await http.post(f"/v1/reviews/{held.review_id}/escalate", json={"reason": "too large for me"})
    assert moved.status_code == 200 and moved.json()["queue"] == "payments-leads"
    async with api(stack, lead) as http:
        listed = (await http.get("/v1/queues/payments-leads/reviews")).json()
    assert [r["review_id"] for r in listed] == [moved.json()["review_id"]]

"""Review gates end to end on real services: a gated invocation is stored before the agent hears
`pending_review`; the decision (approve, reject, approve with edits, each timeout action) resumes
it exactly once, with the final result on sb.<env>.result.<id>, in the audit trail, and returned to
a retry of the same invocation id."""

from __future__ import annotations

import pytest

from services.simulator.completions import generate
from shared.contracts import Status
from tests.support.fallback import sim_count
from tests.support.hitl import (
    LETTER,
    REFUND,
    add_reviewer,
    api,
    audit,
    results,
    reviews,
    wait_acted,
    write_review_policy,
)

pytestmark = pytest.mark.timeout(60)


async def test_pre_gate_holds_before_any_call_then_approval_calls_the_model_once(stack):
    await stack.start()
    sb = await stack.client(agent="refund-bot")
    token = await add_reviewer(stack, "alice", "payments")

    held = await sb.invoke("refunds", "Refund order 1, please.", metadata=REFUND, invocation_id="inv-pre-1")

    assert held.status is Status.PENDING_REVIEW and held.review_id and held.output is None
    assert await sim_count(stack, "openai-sim") == 0
    [row] = await reviews(stack, "inv-pre-1")
    assert (row["id"], row["state"], row["stage"]) == (held.review_id, "pending", "pre")
    assert row["queue"] == "payments"
    assert row["rule"] == "large-refund"
    assert '"metadata.amount":900' in row["matched"] and row["config_version"] == held.config_version

    async with results(stack) as published, api(stack, token) as http:
        response = await http.post(f"/v1/reviews/{held.review_id}/approve", json={"comment": "fine"})
        assert response.status_code == 200, response.text
        final = await published.wait("inv-pre-1")
        acted = await wait_acted(stack, held.review_id)

    assert final.status is Status.SUCCESS and final.output and final.review_id == held.review_id
    assert await sim_count(stack, "openai-sim") == 1
    assert (acted["action"], acted["outcome"]) == ("sent to the model", "success")
    events = [(a["event"], a["actor"], a["actor_kind"]) for a in await audit(stack, "inv-pre-1")]
    assert events == [
        ("requested", "gateway", "system"),
        ("decided", "alice", "human"),
        ("acted", "gateway", "system"),
    ]
    again = await sb.invoke("refunds", "Refund order 1, please.", metadata=REFUND, invocation_id="inv-pre-1")
    assert again.status is Status.SUCCESS and again.output == final.output
    assert await sim_count(stack, "openai-sim") == 1


async def test_ungated_invocation_of_a_gated_workflow_goes_straight_through(stack):
    await stack.start()
    sb = await stack.client()

    result = await sb.invoke("refunds", "Refund order 2.", metadata={"amount": 20})

    assert result.status is Status.SUCCESS and result.review_id is None
    assert await reviews(stack, result.invocation_id) == []


async def test_pre_gate_rejection_is_final_names_who_and_why_and_calls_nothing(stack):
    await stack.start()
    sb = await stack.client()
    token = await add_reviewer(stack, "bob", "payments")
    held = await sb.invoke("refunds", "Refund 3.", metadata=REFUND, invocation_id="inv-rej")

    async with results(stack) as published, api(stack, token) as http:
        response = await http.post(f"/v1/reviews/{held.review_id}/reject", json={"reason": "no receipt"})
        assert response.status_code == 200, response.text
        final = await published.wait("inv-rej")
        await wait_acted(stack, held.review_id)

    assert final.status is Status.REJECTED and final.error.code == "review_rejected"
    assert "bob" in final.error.message and "no receipt" in final.error.message
    assert final.error.details == [{"decided_by": "bob", "decided_kind": "human"}]
    assert await sim_count(stack, "openai-sim") == 0
    again = await sb.invoke("refunds", "Refund 3.", metadata=REFUND, invocation_id="inv-rej")
    assert again.status is Status.REJECTED


async def test_pre_gate_approve_with_edits_sends_the_edited_prompt_and_keeps_both(stack):
    await stack.start()
    sb = await stack.client()
    token = await add_reviewer(stack, "carol", "payments")
    held = await sb.invoke("refunds", "Refund 4 and insult the customer.", metadata=REFUND)
    edited = [{"role": "user", "content": "Refund 4, politely."}]

    async with results(stack) as published, api(stack, token) as http:
        response = await http.post(f"/v1/reviews/{held.review_id}/approve", json={"edited_messages": edited})
        assert response.status_code == 200, response.text
        final = await published.wait(held.invocation_id)

    assert final.status is Status.SUCCESS
    [row] = await reviews(stack, held.invocation_id)
    assert "insult" in row["request"] and "politely" in row["edited_messages"]
    # the simulator's answer is a function of the prompt it was sent
    assert final.output == generate("openai-sim", "gpt-sim-mini", "Refund 4, politely.", 10_000)[0]


async def test_post_gate_holds_the_output_then_releases_the_edited_version(stack):
    await stack.start()
    sb = await stack.client()
    token = await add_reviewer(stack, "dave", "payments")

    held = await sb.invoke("refunds", "Write the refund letter.", metadata=LETTER)

    assert held.status is Status.PENDING_REVIEW and held.output is None
    assert await sim_count(stack, "openai-sim") == 1  # the model was called; its output is held
    async with api(stack, token) as http:
        shown = (await http.get(f"/v1/reviews/{held.review_id}")).json()
        assert shown["stage"] == "post" and shown["output"]
        async with results(stack) as published:
            response = await http.post(
                f"/v1/reviews/{held.review_id}/approve", json={"edited_output": "Dear customer, done."}
            )
            assert response.status_code == 200, response.text
            final = await published.wait(held.invocation_id)

    assert final.status is Status.SUCCESS and final.output == "Dear customer, done."
    assert await sim_count(stack, "openai-sim") == 1
    [row] = await reviews(stack, held.invocation_id)
    assert row["held"] and shown["output"] in row["held"] and row["edited_output"] == "Dear customer, done."


async def test_post_gate_rejection_withholds_the_output(stack):
    await stack.start()
    sb = await stack.client()
    token = await add_reviewer(stack, "erin", "payments")
    held = await sb.invoke("refunds", "Write the refund letter.", metadata=LETTER)

    async with results(stack) as published, api(stack, token) as http:
        await http.post(f"/v1/reviews/{held.review_id}/reject", json={"reason": "wrong amount"})
        final = await published.wait(held.invocation_id)
        acted = await wait_acted(stack, held.review_id)

    assert final.status is Status.REJECTED and final.output is None
    assert acted["action"] == "rejected (output withheld)"


@pytest.mark.parametrize(("action", "status"), [("reject", Status.REJECTED), ("approve", Status.SUCCESS)])
async def test_timeout_takes_the_queue_action_and_is_recorded_as_the_system(stack, action, status):
    write_review_policy(stack, payments={"timeout_s": 1, "on_timeout": action, "escalate_to": None})
    await stack.start(hitl={"sweep_interval_s": 0.2})
    sb = await stack.client()

    async with results(stack) as published:
        held = await sb.invoke("refunds", "Refund 5.", metadata=REFUND)
        final = await published.wait(held.invocation_id)

    assert final.status is status
    [row] = await reviews(stack, held.invocation_id)
    assert (row["decided_by"], row["decided_kind"], row["decision"]) == ("system", "system", "timeout")
    timed_out = [a for a in await audit(stack, held.invocation_id) if a["event"] == "timed_out"]
    assert len(timed_out) == 1 and timed_out[0]["actor_kind"] == "system"
    assert timed_out[0]["action"] == ("rejected" if action == "reject" else "approved")
    assert await sim_count(stack, "openai-sim") == (1 if action == "approve" else 0)


async def test_plan_and_budget_are_decided_at_resume_so_a_refusal_then_is_budget_exceeded(stack):
    await stack.start()
    sb = await stack.client()
    token = await add_reviewer(stack, "alice", "payments")
    held = await sb.invoke("refunds", "Refund order 11, with a long explanation.", metadata=REFUND)
    assert held.status is Status.PENDING_REVIEW
    policy = stack.policy()
    policy["workflows"]["refunds"]["budget"]["max_tokens_per_invocation"] = 5  # below the prompt alone
    await stack.apply(policy)

    async with results(stack) as published, api(stack, token) as http:
        assert (await http.post(f"/v1/reviews/{held.review_id}/approve", json={})).status_code == 200
        final = await published.wait(held.invocation_id)
        acted = await wait_acted(stack, held.review_id)

    assert final.status is Status.BUDGET_EXCEEDED and final.error.code == "budget_exceeded"
    assert final.review_id == held.review_id
    assert (acted["action"], acted["outcome"]) == ("not sent to the model", "budget_exceeded")
    assert await sim_count(stack, "openai-sim") == 0

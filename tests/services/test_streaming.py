"""Streamed invocations over NATS, against real services and the simulator over HTTP: chunks
reach the requester's own inbox in order and end with the final result; a failure before the
first chunk falls back; a break after it ends in `stream_interrupted` (audit row, partial usage in
the ledger), never a clean end; the completion cap cuts a stream; a workflow whose output is
reviewed does not stream; a retry replays the final result."""

from __future__ import annotations

import uuid

import nats
import orjson

from services.simulator.completions import prompt_tokens
from shared import codec, names, tokens
from shared.contracts import (
    AttemptOutcome,
    BudgetShowReply,
    BudgetShowRequest,
    InvokeRequest,
    InvokeResult,
    Message,
    Status,
    StreamChunk,
)
from tests.support.audit import invocation_rows
from tests.support.fallback import PRIMARY, SECONDARY, sim_count, wait_events
from tests.support.helpers import sample
from tests.support.stack import wait_for

WF = "support-triage"


def request(prompt: str, **fields) -> InvokeRequest:
    return InvokeRequest(
        invocation_id=uuid.uuid4().hex,
        workflow=fields.pop("workflow", WF),
        session_id=fields.pop("session_id", f"s-{uuid.uuid4().hex[:8]}"),
        messages=[Message(role="user", content=prompt)],
        stream=True,
        **fields,
    )


async def stream(stack, req: InvokeRequest) -> tuple[list[StreamChunk], InvokeResult]:
    """Send a streamed invocation from a connection of its own; (chunks, final result). Its inbox
    is under a user's name, as every authenticated client's is."""
    nc = await nats.connect(stack.infra.nats_url, inbox_prefix="_INBOX.tests", **stack.infra.nats_options)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(names.invoke(stack.env, req.workflow), codec.encode(req), reply=inbox)
        chunks = []
        while True:
            msg = await sub.next_msg(timeout=20)
            if "status" in orjson.loads(msg.data):
                return chunks, codec.decode(msg.data, InvokeResult)
            chunks.append(codec.decode(msg.data, StreamChunk))
    finally:
        await nc.close()


async def ledger(stack, session_id: str) -> BudgetShowReply:
    nc = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    try:
        ask = BudgetShowRequest(workflow=WF, session_id=session_id)
        msg = await nc.request(names.budget_show(stack.env), codec.encode(ask), timeout=5)
    finally:
        await nc.close()
    return codec.decode(msg.data, BudgetShowReply)


async def settled(stack, session_id: str, used: int) -> None:
    async def holds() -> bool:
        session = (await ledger(stack, session_id)).session
        return session is not None and session.used == used and session.reserved == 0

    await wait_for(holds, message=f"session {session_id} to hold {used} settled tokens")


def streams_metric(end: str) -> float:
    return sample("switchboard_streams_total", workflow=WF, end=end)


def texts(chunks: list[StreamChunk]) -> str:
    return "".join(c.delta for c in chunks)


async def test_chunks_arrive_in_order_and_end_with_the_final_result(running):
    before = streams_metric("complete")
    req = request("stream me a reply")

    chunks, final = await stream(running, req)

    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert {c.invocation_id for c in chunks} == {req.invocation_id}
    assert final.status is Status.SUCCESS, final
    assert (final.provider, final.model) == PRIMARY
    assert texts(chunks) == final.output and final.output.startswith("[openai-sim/gpt-sim-large] ")
    # The simulator sends one word per chunk and counts one token per word.
    assert final.usage.completion_tokens == len(chunks) > 1
    assert final.usage.prompt_tokens == prompt_tokens([{"content": "stream me a reply"}])
    assert final.stream.end == "complete" and final.stream.chunks == len(chunks)
    assert 0 < final.stream.first_chunk_ms <= final.latency_ms
    assert await sim_count(running, *PRIMARY) == 1

    [row] = await wait_events(running, "invocation", 1, invocation_id=req.invocation_id)
    assert row["status"] == "success"
    assert row["stream"] == {
        "chunks": len(chunks),
        "first_chunk_ms": final.stream.first_chunk_ms,
        "end": "complete",
    }
    await settled(running, req.session_id, final.usage.prompt_tokens + final.usage.completion_tokens)
    assert streams_metric("complete") == before + 1


async def test_a_failure_before_the_first_chunk_falls_back(running):
    await running.sim.control.add_fault("break", provider=PRIMARY[0], after_chunks=0, count=1)
    req = request("fall back before anything is sent")

    chunks, final = await stream(running, req)

    assert final.status is Status.FALLBACK, final
    assert [(a.provider, a.outcome) for a in final.attempts] == [
        (PRIMARY[0], AttemptOutcome.CONNECTION_ERROR),
        (SECONDARY[0], AttemptOutcome.OK),
    ]
    assert texts(chunks) == final.output and final.output.startswith("[anthropic-sim/claude-sim-sonnet] ")
    assert (await sim_count(running, *PRIMARY), await sim_count(running, *SECONDARY)) == (1, 1)
    [fallback] = await wait_events(running, "fallback", 1, invocation_id=req.invocation_id)
    assert (fallback["from_provider"], fallback["to_provider"]) == (PRIMARY[0], SECONDARY[0])


async def test_a_break_after_the_fifth_chunk_ends_in_an_error_with_partial_usage_settled(running):
    before = streams_metric("interrupted")
    await running.sim.control.add_fault("break", provider=PRIMARY[0], after_chunks=5, count=1)
    req = request("break this stream half-way")

    chunks, final = await stream(running, req)

    assert [c.seq for c in chunks] == [0, 1, 2, 3, 4]
    assert final.status is Status.ERROR, final
    assert final.error.code == "stream_interrupted"
    assert "after 5 chunks" in final.error.message
    assert final.output == texts(chunks)  # what the agent has, and no more
    estimate = tokens.estimate(req.messages)  # the provider never said: the gateway's estimate
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (estimate, 5)
    assert final.stream.end == "interrupted" and final.stream.chunks == 5
    assert [a.outcome for a in final.attempts] == [AttemptOutcome.CONNECTION_ERROR]
    assert (await sim_count(running, *PRIMARY), await sim_count(running, *SECONDARY)) == (1, 0)

    await wait_events(running, "invocation", 1, invocation_id=req.invocation_id)
    [row] = await invocation_rows(running, req.invocation_id)
    assert (row["status"], row["error_code"]) == ("error", "stream_interrupted")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (estimate, 5)
    await settled(running, req.session_id, estimate + 5)
    assert streams_metric("interrupted") == before + 1


async def test_the_completion_cap_cuts_a_stream_and_is_recorded(running):
    await running.sim.control.add_fault("overrun", provider=PRIMARY[0], count=1)  # ignores max_tokens
    req = request("a provider that does not stop", max_tokens=3)

    chunks, final = await stream(running, req)

    assert len(chunks) == 3
    assert final.status is Status.SUCCESS, final
    assert (final.finish_reason, final.stream.end, final.usage.completion_tokens) == ("length", "cap", 3)
    [row] = await wait_events(running, "invocation", 1, invocation_id=req.invocation_id)
    assert row["stream"]["end"] == "cap" and row["completion_tokens"] == 3
    await settled(running, req.session_id, final.usage.prompt_tokens + 3)


async def test_a_workflow_whose_output_is_reviewed_does_not_stream(running):
    req = request("draft a refund letter", workflow="refunds", metadata={"channel": "email"})

    chunks, final = await stream(running, req)

    assert chunks == []
    assert final.status is Status.ERROR
    assert final.error.code == "stream_not_allowed"
    assert "outbound-refund-letter" in final.error.message
    assert (await running.sim.control.stats())["total"] == 0


async def test_a_retry_of_a_finished_stream_replays_its_final_result_only(running):
    req = request("stream once, ask twice")
    chunks, first = await stream(running, req)

    again, replayed = await stream(running, req)

    assert again == []  # chunks are not replayed: the final result carries the whole output
    assert replayed == first and replayed.output == texts(chunks)
    assert await sim_count(running, *PRIMARY) == 1

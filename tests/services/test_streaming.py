"""Streamed invocations through the SDK over NATS, against real services and the simulator over
HTTP: chunks reach the requester's own inbox in order and end with the final result; a failure
before the first chunk falls back; a break after it raises `StreamInterrupted` (audit row,
partial usage in the ledger), never a clean end, and so does a chunk the gateway cannot publish
(every token produced charged); a stream that outlasts the invocation's worst case keeps its
id claimed against a duplicate; the completion cap cuts a stream; a workflow
whose output is reviewed does not stream; a retry replays the final result; the blocking client
streams too."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import nats
import pytest
import yaml

from services.gateway.invocation import max_in_flight_s
from services.simulator.completions import generate, prompt_tokens
from services.simulator.faults import OVERSIZE_BYTES
from shared import codec, keys, names, tokens
from shared.contracts import (
    AttemptOutcome,
    BudgetShowReply,
    BudgetShowRequest,
    InvokeResult,
    Message,
    Status,
    StreamChunk,
)
from switchboard_sdk import StreamInterrupted, SyncClient
from tests.support.audit import invocation_rows
from tests.support.fallback import PRIMARY, SECONDARY, sim_count, wait_events
from tests.support.helpers import sample
from tests.support.stack import wait_for

WF = "support-triage"


def session() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


async def stream(stack, prompt: str, **kwargs) -> tuple[list[StreamChunk], InvokeResult]:
    """A streamed invocation through the SDK, read to its end: (chunks, final result)."""
    sb = await stack.client()
    chunks = []
    async with sb.stream(kwargs.pop("workflow", WF), prompt, **kwargs) as s:
        async for chunk in s:
            chunks.append(chunk)
    return chunks, s.result


async def interrupted(stack, prompt: str, **kwargs) -> tuple[list[StreamChunk], InvokeResult, str]:
    """A streamed invocation that must break after its first chunk: (the chunks read, the final
    result, the message of the `StreamInterrupted` it raised)."""
    sb = await stack.client()
    chunks = []
    with pytest.raises(StreamInterrupted) as caught:
        async with sb.stream(WF, prompt, **kwargs) as s:
            async for chunk in s:
                chunks.append(chunk)
    return chunks, s.result, caught.value.message


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
    sid = session()

    chunks, final = await stream(running, "stream me a reply", session_id=sid)

    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert {c.invocation_id for c in chunks} == {final.invocation_id}
    assert final.status is Status.SUCCESS, final
    assert (final.provider, final.model) == PRIMARY
    assert texts(chunks) == final.output and final.output.startswith("[openai-sim/gpt-sim-large] ")
    # The simulator sends one word per chunk and counts one token per word.
    assert final.usage.completion_tokens == len(chunks) > 1
    assert final.usage.prompt_tokens == prompt_tokens([{"content": "stream me a reply"}])
    assert final.stream.end == "complete" and final.stream.chunks == len(chunks)
    assert 0 < final.stream.first_chunk_ms <= final.latency_ms
    assert await sim_count(running, *PRIMARY) == 1

    [row] = await wait_events(running, "invocation", 1, invocation_id=final.invocation_id)
    assert row["status"] == "success"
    assert row["stream"] == {
        "chunks": len(chunks),
        "first_chunk_ms": final.stream.first_chunk_ms,
        "end": "complete",
    }
    await settled(running, sid, final.usage.prompt_tokens + final.usage.completion_tokens)
    assert streams_metric("complete") == before + 1


async def test_a_failure_before_the_first_chunk_falls_back(running):
    await running.sim.control.add_fault("break", provider=PRIMARY[0], after_chunks=0, count=1)

    chunks, final = await stream(running, "fall back before anything is sent")

    assert final.status is Status.FALLBACK, final
    assert [(a.provider, a.outcome) for a in final.attempts] == [
        (PRIMARY[0], AttemptOutcome.CONNECTION_ERROR),
        (SECONDARY[0], AttemptOutcome.OK),
    ]
    assert texts(chunks) == final.output and final.output.startswith("[anthropic-sim/claude-sim-sonnet] ")
    assert (await sim_count(running, *PRIMARY), await sim_count(running, *SECONDARY)) == (1, 1)
    [fallback] = await wait_events(running, "fallback", 1, invocation_id=final.invocation_id)
    assert (fallback["from_provider"], fallback["to_provider"]) == (PRIMARY[0], SECONDARY[0])


async def test_a_break_after_the_fifth_chunk_raises_and_settles_the_partial_usage(running):
    before = streams_metric("interrupted")
    await running.sim.control.add_fault("break", provider=PRIMARY[0], after_chunks=5, count=1)
    sid, prompt = session(), "break this stream half-way"
    chunks, final, message = await interrupted(running, prompt, session_id=sid)

    assert [c.seq for c in chunks] == [0, 1, 2, 3, 4]
    assert "after 5 chunks" in message
    assert final.status is Status.ERROR and final.error.code == "stream_interrupted"
    assert final.output == texts(chunks)  # what the agent has, and no more
    estimate = tokens.estimate([Message(role="user", content=prompt)])  # the provider never said
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (estimate, 5)
    assert final.stream.end == "interrupted" and final.stream.chunks == 5
    assert [a.outcome for a in final.attempts] == [AttemptOutcome.CONNECTION_ERROR]
    assert (await sim_count(running, *PRIMARY), await sim_count(running, *SECONDARY)) == (1, 0)

    await wait_events(running, "invocation", 1, invocation_id=final.invocation_id)
    [row] = await invocation_rows(running, final.invocation_id)
    assert (row["status"], row["error_code"]) == ("error", "stream_interrupted")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (estimate, 5)
    await settled(running, sid, estimate + 5)
    assert streams_metric("interrupted") == before + 1


async def test_a_chunk_the_gateway_cannot_relay_ends_the_stream_and_settles_what_was_produced(running):
    """The provider's fourth chunk is larger than a NATS message may be, so the gateway's publish
    of it fails: the stream ends there, and the four chunks the provider produced are charged."""
    nc = await nats.connect(running.infra.nats_url, **running.infra.nats_options)
    limit = nc.max_payload
    await nc.close()
    assert OVERSIZE_BYTES > limit
    await running.sim.control.add_fault("oversize", provider=PRIMARY[0], after_chunks=3, count=1)
    sid, prompt = session(), "a chunk too large to relay"
    chunks, final, message = await interrupted(running, prompt, session_id=sid)

    assert [c.seq for c in chunks] == [0, 1, 2]
    assert "after 3 chunks" in message
    assert final.status is Status.ERROR and final.error.code == "stream_interrupted"
    assert final.output == texts(chunks)  # what the agent has, and no more
    estimate = tokens.estimate([Message(role="user", content=prompt)])  # the stream was cut
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (estimate, 4)
    assert [a.outcome for a in final.attempts] == [AttemptOutcome.OK]  # the provider did its part
    assert (await sim_count(running, *PRIMARY), await sim_count(running, *SECONDARY)) == (1, 0)
    await settled(running, sid, estimate + 4)


async def test_a_first_chunk_the_gateway_cannot_relay_is_charged_and_times_no_first_chunk(running):
    """Nothing reached the requester, so the stream says so (no chunk, no time to a first one,
    none observed in the metric), while the one chunk the provider produced is still charged."""
    await running.sim.control.add_fault("oversize", provider=PRIMARY[0], after_chunks=0, count=1)
    sid, prompt = session(), "a first chunk too large to relay"
    before = sample("switchboard_stream_first_chunk_seconds_count", workflow=WF)
    sb = await running.client()
    chunks = []

    with contextlib.suppress(StreamInterrupted):
        async with sb.stream(WF, prompt, session_id=sid) as s:
            async for chunk in s:
                chunks.append(chunk)

    final = s.result
    assert chunks == [] and final.error.code == "stream_interrupted" and final.output == ""
    assert (final.stream.chunks, final.stream.first_chunk_ms) == (0, None)
    assert sample("switchboard_stream_first_chunk_seconds_count", workflow=WF) == before
    estimate = tokens.estimate([Message(role="user", content=prompt)])
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (estimate, 1)
    await settled(running, sid, estimate + 1)


async def test_a_stream_longer_than_the_claims_worst_case_keeps_its_id_in_flight(stack, redis):
    """A stream lasts as long as its provider keeps sending, past the invocation's worst case
    (every tier's timeout and a margin) that bounds how long a gateway holds the id's claim. A
    duplicate that arrives then is refused as in flight, and the provider is called once."""
    doc = yaml.safe_load((stack.policy_dir / "workflows.yaml").read_text())
    for tier in doc["workflows"][WF]["tiers"]:
        tier["timeout_ms"] = 3000  # a chunk each second is well within a tier's idle timeout
    stack.write_policy("workflows.yaml", doc)
    await stack.start(gateway={"claim_ttl_s": 1.0})
    gateway = stack["gateway"]
    worst = max_in_flight_s(gateway.config.active.policy.workflows[WF]) + gateway.settings.claim_ttl_s
    # an answer whose chunks, one a second, outlast the worst case by a few seconds
    prompt = next(p for p in (f"drip {i}" for i in range(1000)) if generate(*PRIMARY, p, 64)[1] >= worst + 8)
    drip = await stack.sim.control.add_fault("drip", provider=PRIMARY[0], latency_ms=1000)
    iid, sid = uuid.uuid4().hex, session()
    ask = {"invocation_id": iid, "session_id": sid, "max_tokens": 64, "timeout": 20}
    sb = await stack.client()
    loop = asyncio.get_running_loop()

    async with sb.stream(WF, prompt, **ask) as long:
        reading = aiter(long)
        chunks = [await anext(reading)]
        since = loop.time()  # the claim was taken before the first chunk was sent
        while loop.time() - since < worst + 1:
            chunks.append(await anext(reading))
        assert await redis.pttl(keys.idempotency(stack.env, iid)) > 0
        async with asyncio.timeout(15), sb.stream(WF, prompt, **ask) as duplicate:
            assert [c async for c in duplicate] == []
        assert duplicate.result.error.code == "duplicate_in_flight", duplicate.result
        await stack.sim.control.remove_fault(drip)  # the provider sends the rest at once
        chunks += [c async for c in reading]

    final = long.result
    assert final.status is Status.SUCCESS, final
    assert texts(chunks) == final.output and final.usage.completion_tokens == len(chunks)
    assert await sim_count(stack, *PRIMARY) == 1
    await settled(stack, sid, final.usage.prompt_tokens + final.usage.completion_tokens)


async def test_a_stream_longer_than_its_reservation_keeps_it_held_and_is_charged_in_full(stack):
    """A tier's timeout bounds only the wait for the next chunk, so a stream may outlive its
    workflow's reservation_ttl_s. The gateway asks the budget to extend the hold, four times
    per TTL (not per chunk): past the TTL the stream's worst case is still held, so a second
    call that would pass the session limit beside it is refused, and the final settle charges
    every token the stream used."""
    ttl_s, limit = 4, 130
    doc = yaml.safe_load((stack.policy_dir / "workflows.yaml").read_text())
    for tier in doc["workflows"][WF]["tiers"]:
        tier["timeout_ms"] = 1500  # a chunk each half second is well within a tier's idle timeout
    doc["workflows"][WF]["budget"]["reservation_ttl_s"] = ttl_s  # exceeds the chain's 3 s
    doc["workflows"][WF]["budget"]["session"]["tokens"] = limit
    stack.write_policy("workflows.yaml", doc)
    await stack.start()
    prompt = next(p for p in (f"drip {i}" for i in range(1000)) if generate(*PRIMARY, p, 64)[1] >= 20)
    drip = await stack.sim.control.add_fault("drip", provider=PRIMARY[0], latency_ms=500)
    sid = session()
    sb = await stack.client()
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with sb.stream(WF, prompt, session_id=sid, max_tokens=64, invocation_id=uuid.uuid4().hex) as s:
        reading = aiter(s)
        chunks = [await anext(reading)]
        since = loop.time()  # the reservation was taken before the first chunk was sent
        while loop.time() - since < ttl_s + 2:
            chunks.append(await anext(reading))
        held = (await ledger(stack, sid)).session
        assert held.in_flight == 1 and held.used == 0, held
        worst = int(held.reserved)
        assert worst <= limit < 2 * worst  # one such call fits the session, two do not
        beside = await sb.invoke(WF, prompt, session_id=sid, max_tokens=64)
        assert beside.status is Status.BUDGET_EXCEEDED, beside
        assert beside.error.details[0]["scope"] == "session"
        await stack.sim.control.remove_fault(drip)  # the provider sends the rest at once
        chunks += [c async for c in reading]
    elapsed = loop.time() - began

    final = s.result
    assert final.status is Status.SUCCESS, final
    assert texts(chunks) == final.output and final.usage.completion_tokens == len(chunks)
    await settled(stack, sid, final.usage.prompt_tokens + final.usage.completion_tokens)
    [extend] = [e for e in stack["budget"].bus.endpoints if e.name == "budget-extend"]
    # past the TTL it was extended; at most once per quarter of the TTL, fewer than the chunks
    assert 1 <= extend.requests <= elapsed / (ttl_s / 4) + 1 < len(chunks), (extend.requests, elapsed)
    assert extend.errors == 0


async def test_a_stream_whose_reservation_cannot_be_extended_ends_before_it_lapses(stack):
    """With the budget down, the hold cannot be extended: the stream ends as interrupted while
    half the TTL is still held, and once the budget is back the tokens produced settle exactly."""
    ttl_s = 10
    doc = yaml.safe_load((stack.policy_dir / "workflows.yaml").read_text())
    for tier in doc["workflows"][WF]["tiers"]:
        tier["timeout_ms"] = 1500
    doc["workflows"][WF]["budget"]["reservation_ttl_s"] = ttl_s
    stack.write_policy("workflows.yaml", doc)
    await stack.start()
    # an answer that would drip for longer than the reservation lasts
    prompt = next(
        p for p in (f"drip {i}" for i in range(1000)) if generate(*PRIMARY, p, 64)[1] >= 2 * ttl_s + 4
    )
    await stack.sim.control.add_fault("drip", provider=PRIMARY[0], latency_ms=500)
    sid = session()
    sb = await stack.client()
    chunks = []
    with pytest.raises(StreamInterrupted) as caught:
        async with sb.stream(WF, prompt, session_id=sid, max_tokens=64) as s:
            async for chunk in s:
                if not chunks:
                    await stack.stop("budget")
                chunks.append(chunk)
    await stack.start("budget")

    assert "budget reservation could not be extended" in caught.value.message
    final = s.result
    assert final.error.code == "stream_interrupted" and final.stream.end == "interrupted"
    assert final.output == texts(chunks) and final.stream.chunks == len(chunks)
    assert final.usage.completion_tokens == len(chunks) + 1  # the chunk read when it stopped, unsent
    assert len(chunks) < generate(*PRIMARY, prompt, 64)[1] - 1
    await settled(stack, sid, final.usage.prompt_tokens + final.usage.completion_tokens)


async def test_the_completion_cap_cuts_a_stream_and_is_recorded(running):
    await running.sim.control.add_fault("overrun", provider=PRIMARY[0], count=1)  # ignores max_tokens
    sid = session()

    chunks, final = await stream(running, "a provider that does not stop", max_tokens=3, session_id=sid)

    assert len(chunks) == 3
    assert final.status is Status.SUCCESS, final
    assert (final.finish_reason, final.stream.end, final.usage.completion_tokens) == ("length", "cap", 3)
    [row] = await wait_events(running, "invocation", 1, invocation_id=final.invocation_id)
    assert row["stream"]["end"] == "cap" and row["completion_tokens"] == 3
    await settled(running, sid, final.usage.prompt_tokens + 3)


async def test_a_workflow_whose_output_is_reviewed_does_not_stream(running):
    chunks, final = await stream(
        running, "draft a refund letter", workflow="refunds", metadata={"channel": "email"}
    )

    assert chunks == []
    assert final.status is Status.ERROR
    assert final.error.code == "stream_not_allowed"
    assert "outbound-refund-letter" in final.error.message
    assert (await running.sim.control.stats())["total"] == 0


async def test_a_retry_of_a_finished_stream_replays_its_final_result_as_one_chunk(running):
    iid, sid = uuid.uuid4().hex, session()
    chunks, first = await stream(running, "stream once, ask twice", invocation_id=iid, session_id=sid)

    again, replayed = await stream(running, "stream once, ask twice", invocation_id=iid, session_id=sid)

    assert replayed == first and len(chunks) > 1
    assert [(c.seq, c.delta) for c in again] == [(0, texts(chunks))]  # the stored output, whole
    assert await sim_count(running, *PRIMARY) == 1


async def test_the_blocking_client_streams_from_a_thread(running):
    await running.sim.control.add_fault("break", provider=PRIMARY[0], after_chunks=2, count=1)

    def blocking_streams():
        with SyncClient(running.infra.nats_url, env=running.env, agent="sync-agent") as sb:
            # research-summary answers from anthropic-sim: the fault on openai-sim leaves it whole.
            with sb.stream("research-summary", "stream without a loop", session_id=session()) as whole:
                chunks = list(whole)
            broken = []
            with pytest.raises(StreamInterrupted), sb.stream(WF, "and break") as partial:
                broken.extend(partial)
            return chunks, whole.result, broken, partial.result

    # A thread of its own: the services answer from this test's event loop.
    chunks, result, broken, partial = await asyncio.to_thread(blocking_streams)

    assert texts(chunks) == result.output and result.status is Status.SUCCESS
    assert result.output.startswith("[anthropic-sim/claude-sim-sonnet] ") and len(chunks) > 1
    assert len(broken) == 2 and partial.error.code == "stream_interrupted"

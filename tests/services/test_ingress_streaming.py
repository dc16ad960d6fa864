"""Streaming through the ingress with the official `openai` client: server-sent events in OpenAI's
format with usage in the last chunk; a fallback before the first chunk; a break after the fifth
chunk is an error (`openai.APIError`, never a clean end), recorded, with the partial usage in the
ledger; the completion cap cuts a stream; a workflow that does not stream is a 400; a retry with
the same Idempotency-Key replays the result."""

from __future__ import annotations

import uuid

import openai
import pytest

from shared import tokens
from shared.contracts import Message
from tests.services.test_streaming import settled
from tests.support.audit import invocation_rows
from tests.support.fallback import PRIMARY, SECONDARY, sim_count, wait_events
from tests.support.ingress import client, issue_key

pytestmark = pytest.mark.timeout(90)
WF = "support-triage"


@pytest.fixture
async def oa(running):
    """The OpenAI client at the running ingress, as the agent triage-bot."""
    made = client(running["ingress"].api_port, await issue_key(running, "triage-bot"))
    yield made
    await made.close()


async def read(oa, prompt: str, session: str, **request) -> tuple[list, list[str]]:
    """Every chunk of a streamed completion, and the content pieces among them."""
    stream = await oa.chat.completions.create(
        model=WF,
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        extra_headers={"X-Session-Id": session, **request.pop("extra_headers", {})},
        **request,
    )
    chunks = [chunk async for chunk in stream]
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    return chunks, pieces


async def test_a_streamed_completion_has_its_usage_in_the_last_chunk(running, oa):
    session = f"s-{uuid.uuid4().hex[:8]}"

    chunks, pieces = await read(oa, "stream over http", session, stream_options={"include_usage": True})

    assert len(pieces) > 1 and "".join(pieces).startswith("[openai-sim/gpt-sim-large] ")
    assert chunks[0].choices[0].delta.role == "assistant"
    finish, last = chunks[-2], chunks[-1]
    assert finish.choices[0].finish_reason == "stop"
    board = finish.model_extra["switchboard"]
    assert (board["status"], board["provider"]) == ("success", "openai-sim")
    assert last.choices == [] and last.usage.completion_tokens == len(pieces)
    assert {c.id for c in chunks} == {f"chatcmpl-{board['invocation_id']}"}
    [row] = await wait_events(running, "invocation", 1, invocation_id=board["invocation_id"])
    assert (row["agent"], row["status"], row["stream"]["chunks"]) == ("triage-bot", "success", len(pieces))
    await settled(running, session, last.usage.prompt_tokens + last.usage.completion_tokens)

    chunks, _ = await read(oa, "no usage chunk asked for", session)
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage.total_tokens > 0


async def test_a_failure_before_the_first_chunk_falls_back(running, oa):
    await running.sim.control.add_fault("503", provider=PRIMARY[0], count=1)

    chunks, pieces = await read(oa, "fall back over http", "s-http-fallback")

    assert "".join(pieces).startswith("[anthropic-sim/claude-sim-sonnet] ")
    assert chunks[-1].model_extra["switchboard"]["status"] == "fallback"
    assert (await sim_count(running, *PRIMARY), await sim_count(running, *SECONDARY)) == (1, 1)


async def test_a_break_after_the_fifth_chunk_is_an_error_not_a_clean_end(running, oa):
    await running.sim.control.add_fault("break", provider=PRIMARY[0], after_chunks=5, count=1)
    iid, session, prompt = uuid.uuid4().hex, f"s-{uuid.uuid4().hex[:8]}", "break over http"
    stream = await oa.chat.completions.create(
        model=WF,
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        extra_headers={"X-Session-Id": session, "Idempotency-Key": iid},
    )
    pieces = []

    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)

    assert len(pieces) == 5
    assert caught.value.body["code"] == "stream_interrupted"
    assert "after 5 chunks" in caught.value.message
    await wait_events(running, "invocation", 1, invocation_id=iid)
    [row] = await invocation_rows(running, iid)
    assert (row["status"], row["error_code"], row["completion_tokens"]) == ("error", "stream_interrupted", 5)
    await settled(running, session, tokens.estimate([Message(role="user", content=prompt)]) + 5)
    assert await sim_count(running, *SECONDARY) == 0

    with pytest.raises(openai.APIStatusError) as retried:  # the same key: the recorded outcome
        await read(oa, prompt, session, extra_headers={"Idempotency-Key": iid})
    assert (retried.value.status_code, retried.value.body["code"]) == (502, "stream_interrupted")
    assert await sim_count(running, *PRIMARY) == 1


async def test_the_cap_cuts_a_stream_and_a_reviewed_workflow_does_not_stream(running, oa):
    await running.sim.control.add_fault("overrun", provider=PRIMARY[0], count=1)

    chunks, pieces = await read(oa, "a provider that does not stop", "s-http-cap", max_tokens=3)

    assert len(pieces) == 3 and chunks[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.chat.completions.create(
            model="refunds", messages=[{"role": "user", "content": "a letter"}], stream=True
        )
    assert refused.value.body["code"] == "stream_not_allowed"

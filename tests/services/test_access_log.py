"""One log line for every request the gateway answers, in one shape: invocations, replays,
duplicates in flight, conflicting ids and invalid requests; the line and the audit row say
what was asked (max_tokens, the prompt-token estimate)."""

from __future__ import annotations

import asyncio
import logging

import nats
import orjson
import pytest

from services.gateway.access_log import Answer
from shared import codec, names
from shared.contracts import InvokeResult, Status
from shared.telemetry.logs import JsonFormatter
from tests.support.fallback import wait_events
from tests.support.stack import wait_for

WF = "support-triage"


@pytest.fixture
def lines(caplog, running):
    """The gateway's answer lines as printed (JSON objects), in order."""
    caplog.set_level(logging.INFO, logger="switchboard.gateway")
    formatter = JsonFormatter("gateway", running.env)

    def read() -> list[dict]:
        return [
            orjson.loads(formatter.format(r))
            for r in caplog.records
            if r.name == "switchboard.gateway" and r.getMessage() == "invocation"
        ]

    return read


def keys(line: dict) -> set[str]:
    return set(line) - {"ts"}


async def raw_request(stack, subject: str, data: bytes) -> InvokeResult:
    nc = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    try:
        msg = await nc.request(subject, data, timeout=5)
    finally:
        await nc.close()
    return codec.decode(msg.data, InvokeResult)


async def test_every_answer_is_one_line_of_one_shape(running, lines):
    client = await running.client()
    first = await client.invoke(WF, "hello there", invocation_id="log-1", max_tokens=64, session_id="s-1")
    assert first.status is Status.SUCCESS
    replayed = await client.invoke(WF, "hello there", invocation_id="log-1", max_tokens=64, session_id="s-1")
    assert replayed.model_dump() == first.model_dump()
    conflict = await client.invoke(WF, "something else", invocation_id="log-1")
    assert conflict.error.code == "idempotency_conflict"
    unknown = await raw_request(
        running,
        names.invoke(running.env, "no-such-flow"),
        orjson.dumps(
            {
                "invocation_id": "log-2",
                "workflow": "no-such-flow",
                "messages": [{"role": "user", "content": "x"}],
            }
        ),
    )
    assert unknown.error.code == "unknown_workflow"
    invalid = await raw_request(
        running,
        names.invoke(running.env, WF),
        orjson.dumps({"invocation_id": "log-3", "workflow": WF, "max_tokens": 9, "messages": []}),
    )
    assert invalid.error.code == "invalid_request"
    garbage = await raw_request(running, names.invoke(running.env, WF), b"\xff not json")
    assert garbage.error.code == "invalid_request"

    got = await wait_for(lambda: (found := lines()) and len(found) >= 6 and found, message="six lines")
    assert len(got) == 6
    assert all(keys(line) == keys(got[0]) for line in got), [sorted(keys(line)) for line in got]
    by = [(line["answer"], line["invocation_id"], line["status"], line["error_code"]) for line in got]
    assert by == [
        (Answer.INVOCATION, "log-1", "success", None),
        (Answer.REPLAY, "log-1", "success", None),
        (Answer.REFUSED, "log-1", "error", "idempotency_conflict"),
        (Answer.REFUSED, "log-2", "error", "unknown_workflow"),
        (Answer.REFUSED, "log-3", "error", "invalid_request"),
        (Answer.REFUSED, None, "error", "invalid_request"),
    ]
    ran, replay = got[0], got[1]
    assert (ran["max_tokens"], ran["session_id"], ran["workflow"]) == (64, "s-1", WF)
    assert ran["estimated_prompt_tokens"] > 0
    assert (ran["prompt_tokens"], ran["completion_tokens"]) == (
        first.usage.prompt_tokens,
        first.usage.completion_tokens,
    )
    assert (ran["trace_id"], ran["attempts"]) == (first.trace_id, 1)
    # A replay sends the stored answer: no tokens and no attempts are spent on it.
    assert (replay["max_tokens"], replay["prompt_tokens"], replay["attempts"]) == (64, 0, 0)
    assert replay["provider"] == first.provider and replay["trace_id"] != first.trace_id
    assert got[4]["max_tokens"] == 9  # what an invalid request asked for, read where it can be

    # The audit row carries what was asked, the same as the line.
    [event] = await wait_events(running, "invocation", invocation_id="log-1")
    assert (event["max_tokens"], event["estimated_prompt_tokens"]) == (64, ran["estimated_prompt_tokens"])


async def test_a_duplicate_in_flight_gets_its_line(running, lines):
    await running.sim.control.set_latency(1500)
    client = await running.client()
    first = asyncio.ensure_future(client.invoke(WF, "slow", invocation_id="log-dup", timeout=10))

    async def at_provider() -> bool:
        return (await running.sim.control.stats())["total"] == 1

    await wait_for(at_provider, message="the first call at the provider")
    duplicate = await client.invoke(WF, "slow", invocation_id="log-dup")
    assert duplicate.error.code == "duplicate_in_flight"
    await first

    got = lines()
    assert [(line["answer"], line["error_code"]) for line in got] == [
        (Answer.REFUSED, "duplicate_in_flight"),
        (Answer.INVOCATION, None),
    ]
    assert keys(got[0]) == keys(got[1])

"""Hypothesis-generated request bodies on every subject the services serve: arbitrary JSON,
valid requests with one field replaced or dropped, and raw bytes. Every request gets a reply
(a JSON object; an error has a code), no handler fails unexpectedly, and each service still
serves a valid request afterwards. SB_FUZZ_EXAMPLES sets the cases per subject."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import uuid

import nats
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from shared import names
from tests.support.helpers import sample

EXAMPLES = int(os.environ.get("SB_FUZZ_EXAMPLES", "40"))
WF = "support-triage"
_ids = itertools.count()


def invoke_body() -> dict:
    return {
        "invocation_id": f"fz-{next(_ids)}",
        "workflow": WF,
        "messages": [{"role": "user", "content": "hi"}],
    }


# subject builder, serving service, a valid body, whether the subject replies
SUBJECTS = {
    "invoke": (lambda env: names.invoke(env, WF), "gateway", invoke_body, True),
    "outcome": (
        names.router_outcome,
        "router",
        lambda: {"provider": "openai-sim", "model": "gpt-sim-large", "outcome": "ok"},
        False,
    ),
    "status": (names.router_status, "router", lambda: {"provider": "openai-sim"}, True),
    "block": (names.router_block, "router", lambda: {"provider": "openai-sim", "blocked": False}, True),
    "reserve": (
        names.budget_reserve,
        "budget",
        lambda: {"invocation_id": "r", "workflow": WF, "estimated_prompt_tokens": 3, "session_id": "s"},
        True,
    ),
    "settle": (
        names.budget_settle,
        "budget",
        lambda: {"invocation_id": "r", "workflow": WF, "session_id": "s", "prompt_tokens": 1},
        False,
    ),
    "extend": (
        names.budget_extend,
        "budget",
        lambda: {"invocation_id": "r", "workflow": WF, "session_id": "s", "hold_token": "t"},
        True,
    ),
    "show": (names.budget_show, "budget", lambda: {"workflow": WF, "session_id": "s"}, True),
    "trace": (names.recorder_trace, "recorder", lambda: {"invocation_id": "t"}, True),
    "count": (
        names.recorder_count,
        "recorder",
        lambda: {"kind": "invocation", "invocation_ids": ["t"]},
        True,
    ),
    "dead_letters": (names.recorder_dead_letters, "recorder", lambda: {"limit": 3}, True),
    "degradation": (names.degradation, "router", lambda: {"workflow": WF}, True),
}

scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # JSON has no size limit on integers; 64-bit encoders and columns do
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def dumps(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def bodies(valid) -> st.SearchStrategy[bytes]:
    keys = list(valid())
    replaced = st.tuples(st.sampled_from([*keys, "extra"]), json_values).map(
        lambda kv: dumps({**valid(), kv[0]: kv[1]})
    )
    dropped = st.sampled_from(keys).map(lambda k: dumps({x: v for x, v in valid().items() if x != k}))
    return json_values.map(dumps) | replaced | dropped | st.binary(max_size=64)


def draw(strategy: st.SearchStrategy[bytes], n: int) -> list[bytes]:
    """`n` examples from hypothesis' generator (no shrinking: each failure names its body)."""
    out: list[bytes] = []

    @settings(
        max_examples=n,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(body: bytes) -> None:
        out.append(body)

    collect()
    return out


def check_reply(subject: str, body: bytes, data: bytes) -> None:
    reply = orjson.loads(data)
    assert isinstance(reply, dict), f"{subject} {body!r}: reply {data[:200]!r}"
    error = reply.get("error")
    if error is not None:
        assert isinstance(error.get("code"), str) and error["code"], f"{subject} {body!r}: {data[:300]!r}"
        assert error["code"] != "internal", f"{subject} {body!r}: {data[:300]!r}"


@pytest.mark.timeout(300)
async def test_fuzzed_bodies_on_every_subject_are_answered_and_break_nothing(stack):
    await stack.start()
    nc = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    failures_before = {s: sample("switchboard_handler_errors_total", service=s) for s in stack.services}
    try:
        for target, (subject_of, _, valid, replies) in SUBJECTS.items():
            subject = subject_of(stack.env)
            cases = draw(bodies(valid), EXAMPLES)
            for chunk in _chunks(cases):
                if replies:
                    answers = await asyncio.gather(*(nc.request(subject, body, timeout=10) for body in chunk))
                    for body, msg in zip(chunk, answers, strict=True):
                        check_reply(target, body, msg.data)
                else:
                    for body in chunk:
                        await nc.publish(subject, body)
            await nc.flush()
        for target, (subject_of, _, valid, replies) in SUBJECTS.items():  # everyone still serves
            if replies and target != "invoke":
                msg = await nc.request(subject_of(stack.env), orjson.dumps(valid()), timeout=10)
                check_reply(target, b"valid", msg.data)
        body = orjson.dumps({**invoke_body(), "invocation_id": uuid.uuid4().hex})
        await nc.request(names.router_block(stack.env), b'{"provider": "openai-sim", "blocked": false}')
        await nc.request(names.router_block(stack.env), b'{"provider": "anthropic-sim", "blocked": false}')
        final = orjson.loads((await nc.request(names.invoke(stack.env, WF), body, timeout=20)).data)
        assert final["status"] in ("success", "fallback"), final
    finally:
        await nc.close()
    for service, before in failures_before.items():
        assert sample("switchboard_handler_errors_total", service=service) == before, service


def _chunks(cases: list[bytes], size: int = 16):
    for i in range(0, len(cases), size):
        yield cases[i : i + size]

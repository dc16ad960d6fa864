"""Garbage on every subject the services answer, sent with raw nats-py: each message gets an error
reply with a machine-readable code, nothing crashes or hangs, and the service still serves."""

from __future__ import annotations

import random
import uuid

import nats
import orjson
import pytest

from shared import names
from tests.support.helpers import ask, sample
from tests.support.stack import wait_for

LIMIT = 4096  # every service's max_payload_bytes in these tests
SERVICES = ("gateway", "router", "budget", "recorder")
WF = "support-triage"


def msg(text: str = "hi") -> list[dict]:
    return [{"role": "user", "content": text}]


def invoke_body(**over) -> dict:
    return {"invocation_id": uuid.uuid4().hex, "workflow": WF, "messages": msg(), **over}


NEEDS = {  # the services a target's valid request needs (the budget check of support-triage is
    # fail_closed; the recorder creates the event stream the gateway publishes to)
    "invoke": ("recorder", "router", "budget", "gateway"),
    "degradation": ("router",),
    "reserve": ("budget",),
    "trace": ("recorder",),
}


@pytest.fixture
async def nc(stack):
    conn = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    yield conn
    await conn.close()


async def start(stack, target: str) -> None:
    """The services `target` needs, each refusing payloads over LIMIT bytes."""
    await stack.start(*NEEDS[target], **{name: {"max_payload_bytes": LIMIT} for name in SERVICES})


# subject builder, service, a valid request body, a check of the reply to it
TARGETS = {
    "invoke": (
        lambda env: names.invoke(env, WF),
        "gateway",
        invoke_body,
        lambda r: r["status"] == "success" and r["provider"] == "openai-sim",
    ),
    "degradation": (
        names.degradation,
        "router",
        lambda: {"workflow": WF},
        lambda r: "error" not in r and r["workflow"] == WF,
    ),
    "reserve": (
        names.budget_reserve,
        "budget",
        lambda: {"invocation_id": "r-1", "workflow": WF, "estimated_prompt_tokens": 10},
        lambda r: r["allowed"] is True and "error" not in r,
    ),
    "trace": (
        names.recorder_trace,
        "recorder",
        lambda: {"invocation_id": "never-sent"},
        lambda r: r["found"] is False and "error" not in r,
    ),
}

GENERIC = {
    "not-json": b"{this is not json",
    "empty": b"",
    "json-array": b'[{"invocation_id": "x"}]',
    "json-string": b'"hello"',
    "json-null": b"null",
    "invalid-utf8": b'{"invocation_id": "\xff\xfe"}',
    "deep-nesting": b"[" * 3000,
}

# per target: bad JSON objects (encoded below) and the code each must get
SPECIFIC = {
    "invoke": {
        "wrong-type": (invoke_body(max_tokens="lots"), "invalid_request"),
        "messages-not-a-list": (invoke_body(messages="hi"), "invalid_request"),
        "bad-role": (invoke_body(messages=[{"role": "robot", "content": "x"}]), "invalid_request"),
        "unknown-field": (invoke_body(colour="red"), "invalid_request"),
        "missing-invocation-id": ({"workflow": WF, "messages": msg()}, "invalid_request"),
        "missing-messages": ({"invocation_id": "a", "workflow": WF}, "invalid_request"),
        "empty-messages": (invoke_body(messages=[]), "invalid_request"),
        "bad-invocation-id": (invoke_body(invocation_id="has spaces"), "invalid_request"),
        "nested-metadata": (invoke_body(metadata={"a": {"b": 1}}), "invalid_request"),
        "nul-in-agent": (invoke_body(agent="bad\x00agent"), "invalid_request"),
        "control-in-agent": (invoke_body(agent="bell\x07"), "invalid_request"),
        "nul-in-metadata-value": (invoke_body(metadata={"k": "v\x00"}), "invalid_request"),
        "control-in-metadata-key": (invoke_body(metadata={"k\x1b[31m": "v"}), "invalid_request"),
        "huge-metadata-value": (invoke_body(metadata={"k": "v" * 1025}), "invalid_request"),
        "too-many-metadata": (invoke_body(metadata={f"k{i}": i for i in range(65)}), "invalid_request"),
        "nul-in-message-name": (
            invoke_body(messages=[{"role": "user", "content": "x", "name": "\x00"}]),
            "invalid_request",
        ),
        "negative-max-tokens": (invoke_body(max_tokens=-1), "invalid_request"),
        "workflow-not-subject": (invoke_body(workflow="research-summary"), "invalid_request"),
        "too-large": (invoke_body(messages=msg("x" * LIMIT)), "payload_too_large"),
    },
    "degradation": {
        "wrong-type": ({"workflow": 7}, "invalid_request"),
        "unknown-field": ({"workflow": WF, "colour": "red"}, "invalid_request"),
        "missing-workflow": ({}, "invalid_request"),
        "unknown-workflow": ({"workflow": "nope"}, "unknown_workflow"),
        "too-large": ({"workflow": "a" * LIMIT}, "payload_too_large"),
    },
    "reserve": {
        "wrong-type": (
            {"invocation_id": "a", "workflow": WF, "estimated_prompt_tokens": "ten"},
            "invalid_request",
        ),
        "negative": (
            {"invocation_id": "a", "workflow": WF, "estimated_prompt_tokens": -1},
            "invalid_request",
        ),
        "unknown-field": (
            {"invocation_id": "a", "workflow": WF, "estimated_prompt_tokens": 1, "colour": "red"},
            "invalid_request",
        ),
        "missing-estimate": ({"invocation_id": "a", "workflow": WF}, "invalid_request"),
        "unknown-workflow": (
            {"invocation_id": "a", "workflow": "nope", "estimated_prompt_tokens": 1},
            "unknown_workflow",
        ),
        "too-large": (
            {"invocation_id": "a" * LIMIT, "workflow": WF, "estimated_prompt_tokens": 1},
            "payload_too_large",
        ),
    },
    "trace": {
        "wrong-type": ({"invocation_id": ["a"]}, "invalid_request"),
        "unknown-field": ({"invocation_id": "a", "colour": "red"}, "invalid_request"),
        "missing-id": ({}, "invalid_request"),
        "too-large": ({"invocation_id": "a" * LIMIT}, "payload_too_large"),
    },
}


def cases(target: str) -> list[tuple[str, bytes, str]]:
    """(name, raw message, expected code) of every bad message for `target`."""
    out = [(name, raw, "invalid_request") for name, raw in GENERIC.items()]
    out += [(name, orjson.dumps(body), code) for name, (body, code) in SPECIFIC[target].items()]
    return out


def error_code(reply: dict) -> str | None:
    error = reply.get("error")
    return error.get("code") if isinstance(error, dict) else None


@pytest.mark.parametrize("target", list(TARGETS))
async def test_bad_requests_get_an_error_code_and_the_service_still_serves(stack, nc, target):
    await start(stack, target)
    subject_of, service, valid, is_good = TARGETS[target]
    subject = subject_of(stack.env)
    problems = []

    for name, raw, code in cases(target):
        refused_before = sample("switchboard_bad_requests_total", service=service, code=code)
        crashes_before = sample("switchboard_handler_errors_total", service=service)

        reply = await ask(nc, subject, raw)

        if error_code(reply) != code or not reply["error"].get("message"):
            problems.append(f"{name}: expected {code}, got {reply}")
        if target == "invoke" and reply.get("status") != "error":
            problems.append(f"{name}: status {reply.get('status')!r}, expected 'error'")
        counted = sample("switchboard_bad_requests_total", service=service, code=code) - refused_before
        if code != "unknown_workflow" and counted != 1:  # unknown_workflow: valid, but not in this policy
            problems.append(f"{name}: switchboard_bad_requests_total rose by {counted}, expected 1")
        if sample("switchboard_handler_errors_total", service=service) != crashes_before:
            problems.append(f"{name}: the handler crashed")
        good = await ask(nc, subject, orjson.dumps(valid()))
        if not is_good(good):
            problems.append(f"{name}: the next valid request got {good}")

    assert problems == []


async def test_invalid_invoke_reply_echoes_the_invocation_id(stack, nc):
    await stack.start("gateway")

    reply = await ask(
        nc, names.invoke(stack.env, WF), orjson.dumps(invoke_body(invocation_id="keep-me", messages=[]))
    )

    assert reply["invocation_id"] == "keep-me"
    assert reply["error"]["code"] == "invalid_request"
    assert any(d["loc"] == "messages" for d in reply["error"]["details"])


async def test_unknown_workflow_on_its_own_subject(stack, nc):
    await stack.start("gateway")

    reply = await ask(nc, names.invoke(stack.env, "nope"), orjson.dumps(invoke_body(workflow="nope")))

    assert reply["status"] == "error"
    assert reply["error"]["code"] == "unknown_workflow"
    assert reply["config_version"].startswith("files:")


@pytest.mark.parametrize("target", list(TARGETS))
async def test_random_blobs(stack, nc, target):
    await start(stack, target)
    subject_of, service, valid, is_good = TARGETS[target]
    subject = subject_of(stack.env)
    rng = random.Random(f"blobs-{target}")
    refused_before = sum(
        sample("switchboard_bad_requests_total", service=service, code=c)
        for c in ("invalid_request", "payload_too_large")
    )
    crashes_before = sample("switchboard_handler_errors_total", service=service)

    codes = []
    for i in range(200):
        size = (
            rng.choice((0, 1, 2, 16, 200, LIMIT - 1, LIMIT + 1, 3 * LIMIT))
            if i % 4 == 0
            else rng.randrange(1, 600)
        )
        reply = await ask(nc, subject, rng.randbytes(size), timeout=10.0)
        codes.append(error_code(reply))

    assert set(codes) <= {"invalid_request", "payload_too_large"}, set(codes)
    assert "payload_too_large" in codes and "invalid_request" in codes
    refused_after = sum(
        sample("switchboard_bad_requests_total", service=service, code=c)
        for c in ("invalid_request", "payload_too_large")
    )
    assert refused_after - refused_before == 200
    assert sample("switchboard_handler_errors_total", service=service) == crashes_before
    assert is_good(await ask(nc, subject, orjson.dumps(valid())))


async def test_bad_settle_without_a_reply_subject_is_counted_and_harmless(stack, nc):
    await stack.start("budget")
    before = sample("switchboard_bad_requests_total", service="budget", code="invalid_request")

    await nc.publish(names.budget_settle(stack.env), b"{garbage")
    await nc.flush()

    await wait_for(
        lambda: sample("switchboard_bad_requests_total", service="budget", code="invalid_request") > before,
        message="the budget to count the bad settle",
    )
    reserve = await ask(
        nc,
        names.budget_reserve(stack.env),
        orjson.dumps({"invocation_id": "r", "workflow": WF, "estimated_prompt_tokens": 1}),
    )
    assert reserve["allowed"] is True

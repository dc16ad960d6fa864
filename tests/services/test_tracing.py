"""One trace per invocation across every hop, exported over OTLP/HTTP by real processes to a
receiver in the test: sbctl (the SDK), gateway, router, budget, each provider attempt in the
GenAI conventions, and the recorder; span events for fallback, rate limit and budget breach."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from shared.telemetry import tracing
from tests.support import otlp
from tests.support.helpers import SIM_KEYS, ServiceProcess, infra_env, run_sbctl
from tests.support.stack import wait_for

SERVICES = ("router", "budget", "recorder", "gateway")


@pytest.fixture
async def receiver():
    async with otlp.Receiver() as r:
        yield r


@pytest.fixture
async def exporting(stack, tmp_path, receiver, monkeypatch):
    """Every service as a process exporting spans to the receiver; stopped afterwards."""
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    env = infra_env(
        stack.infra,
        SB_ENV=stack.env,
        SB_CONFIG_DIR=str(stack.policy_dir),
        SB_SIMULATOR_URL=stack.sim.url,
        **SIM_KEYS,
        **otel,
    )
    procs = [ServiceProcess(name, env, tmp_path) for name in SERVICES]
    try:
        for p in procs:
            await p.start()
        await asyncio.gather(*(p.wait_ready() for p in procs))
        yield otel
    finally:
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)


async def sbctl_invoke(stack, otel: dict, *args: str) -> dict:
    code, out, err = await run_sbctl(
        stack.infra, "invoke", "support-triage", *args, "--env", stack.env, "--json", extra_env=otel
    )
    assert code in (0, 1), err  # 1: the invocation was answered but did not succeed
    return json.loads(out)


def one(spans: list[otlp.Span], **match) -> otlp.Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [(s.service, s.name) for s in spans])
    return found[0]


def event(span: otlp.Span, name: str) -> dict:
    [attributes] = [a for n, a in span.events if n == name]
    return attributes


async def test_a_fallback_invocation_is_one_trace_across_every_hop(stack, exporting, receiver):
    await stack.sim.control.add_fault("429", provider="openai-sim", count=1, retry_after_s=2)
    result = await sbctl_invoke(stack, exporting, "hello there")
    assert result["status"] == "fallback"
    trace_id = result["trace_id"]

    # Each process exports on its own schedule: wait until every hop has arrived.
    expected = Counter(
        {
            "invoke support-triage": 1,
            "gateway invoke.support-triage": 1,
            "budget budget.reserve": 1,
            "chat gpt-sim-large": 1,
            "chat claude-sim-sonnet": 1,
            "router router.outcome": 1,
            "record attempt_started": 2,
            "record attempt": 2,
            "record fallback": 1,
            "record invocation": 1,
            "record rate_limit": 1,
        }
    )

    def complete():
        spans = receiver.trace(trace_id)
        return spans if Counter(s.name for s in spans) >= expected else None

    spans = await wait_for(complete, timeout=30, interval=0.1, message="every hop's spans")
    print("\n" + otlp.render(spans))

    root = one(spans, parent_id="")
    assert (root.service, root.name, root.kind) == ("switchboard-sbctl", "invoke support-triage", "client")
    gateway = one(spans, service="switchboard-gateway", kind="server")
    assert gateway.parent_id == root.span_id
    assert gateway.attributes["switchboard.invocation_id"] == result["invocation_id"]
    reserve = one(spans, service="switchboard-budget", name="budget budget.reserve")
    assert reserve.parent_id == gateway.span_id
    # The gateway plans in its own process: the router only hears the 429's outcome.
    assert [s.name for s in spans if s.service == "switchboard-router"] == ["router router.outcome"]

    # Each provider attempt: a client span of the gateway in the GenAI conventions.
    failed = one(spans, name="chat gpt-sim-large")
    answered = one(spans, name="chat claude-sim-sonnet")
    assert failed.parent_id == answered.parent_id == gateway.span_id
    assert failed.kind == answered.kind == "client"
    assert failed.error and failed.attributes["error.type"] == "rate_limited"
    assert {k: failed.attributes[k] for k in ("gen_ai.operation.name", "gen_ai.provider.name")} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
    }
    assert failed.attributes["gen_ai.request.model"] == "gpt-sim-large"
    assert "gen_ai.response.model" not in failed.attributes
    usage = result["usage"]
    assert {k: v for k, v in answered.attributes.items() if k.startswith("gen_ai.")} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-sim-sonnet",
        "gen_ai.request.max_tokens": answered.attributes["gen_ai.request.max_tokens"],
        "gen_ai.response.model": "claude-sim-sonnet",
        "gen_ai.usage.input_tokens": usage["prompt_tokens"],
        "gen_ai.usage.output_tokens": usage["completion_tokens"],
        "gen_ai.response.finish_reasons": [result["finish_reason"]],
    }

    # Span events: the fallback on the gateway's span; the 429 on the router's span for the
    # outcome report, a child of the attempt that got it.
    fallback = event(gateway, "switchboard.fallback")
    assert (fallback["switchboard.from_provider"], fallback["switchboard.to_provider"]) == (
        "openai-sim",
        "anthropic-sim",
    )
    outcome = one(spans, service="switchboard-router", name="router router.outcome", parent_id=failed.span_id)
    assert event(outcome, "switchboard.rate_limit")["switchboard.source"] == "provider_429"

    # The recorder closes the trace: one span per recorded event, under the span that emitted it.
    recorded = sorted((s.name, s.parent_id) for s in spans if s.service == "switchboard-recorder")
    assert recorded == sorted(
        [
            ("record attempt_started", gateway.span_id),
            ("record attempt_started", gateway.span_id),
            ("record attempt", gateway.span_id),
            ("record attempt", gateway.span_id),
            ("record fallback", gateway.span_id),
            ("record invocation", gateway.span_id),
            ("record rate_limit", outcome.span_id),
        ]
    )
    # Every span hangs off the root: no orphan, no second trace for this invocation.
    ids = {s.span_id for s in spans}
    assert all(s.parent_id in ids for s in spans if s is not root)
    other = {
        s.trace_id
        for s in receiver.spans
        if s.attributes.get("switchboard.invocation_id") == result["invocation_id"]
    }
    assert other == {trace_id}


async def test_a_budget_breach_is_an_event_on_the_budget_span(stack, exporting, receiver):
    result = await sbctl_invoke(stack, exporting, "too long", "--max-tokens", "50000")
    assert result["status"] == "budget_exceeded"

    def reserve():
        found = [s for s in receiver.trace(result["trace_id"]) if s.name == "budget budget.reserve"]
        return found[0] if found else None

    span = await wait_for(reserve, timeout=30, interval=0.1, message="the budget's span")
    breach = event(span, "switchboard.budget_breach")
    assert breach["switchboard.scope"] == "invocation"
    assert breach["switchboard.invocation_id"] == result["invocation_id"]
    assert stack.sim.control is not None and (await stack.sim.control.stats())["total"] == 0


def test_the_operator_names_the_service(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert tracing.resource("gateway", "prod").attributes["service.name"] == "switchboard-gateway"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-gateway")
    resource = tracing.resource("gateway", "prod")
    assert resource.attributes["service.name"] == "edge-gateway"
    assert resource.attributes["deployment.environment.name"] == "prod"
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=gw-eu")
    assert tracing.resource("gateway", "prod").attributes["service.name"] == "gw-eu"

"""Every event kind is one model: emitted by the bus, decoded by the recorder into the audit
log, and read back as the same model by `sbctl trace`."""

from __future__ import annotations

import uuid
from typing import get_args

import asyncpg
import pytest

from shared import codec
from shared.bus import Bus
from shared.contracts import (
    AnyEvent,
    Attempt,
    AttemptEvent,
    AttemptOutcome,
    AttemptStartedEvent,
    BudgetBreachEvent,
    BudgetScope,
    BudgetUnavailableEvent,
    CircuitEvent,
    ConfigEvent,
    Event,
    EventKind,
    FallbackEvent,
    InvocationEvent,
    LeverEvent,
    PassthroughEvent,
    ProbeEvent,
    ProviderBlockEvent,
    RateLimitEvent,
    RateLimitSource,
    Status,
    TraceReply,
)
from shared.settings import Settings
from tests.support.helpers import run_sbctl
from tests.support.stack import wait_for

WF = "support-triage"
VERSION = "7"


def samples(iid: str) -> list[Event]:
    """One event of every kind; all but config and provider_block name invocation `iid`."""
    scoped = {"invocation_id": iid, "workflow": WF, "config_version": VERSION}
    return [
        InvocationEvent(
            **scoped,
            session_id="s-1",
            agent="triage-bot",
            status=Status.FALLBACK,
            provider="anthropic-sim",
            model="claude-sim-sonnet",
            prompt_tokens=12,
            completion_tokens=5,
            max_tokens=64,
            estimated_prompt_tokens=13,
            latency_ms=41.5,
            attempts=[
                Attempt(tier=0, provider="openai-sim", model="gpt-sim-large", outcome="rate_limited"),
                Attempt(tier=1, provider="anthropic-sim", model="claude-sim-sonnet", outcome="ok"),
            ],
            error=None,
            metadata={"team": "support", "priority": 2},
            message_count=1,
            output_chars=40,
        ),
        AttemptEvent(
            **scoped,
            tier=0,
            provider="openai-sim",
            model="gpt-sim-large",
            outcome=AttemptOutcome.RATE_LIMITED,
            latency_ms=3.25,
            status_code=429,
            reason="slow down",
            attempt_id="a1",
        ),
        AttemptStartedEvent(**scoped, attempt_id="a1", tier=0, provider="openai-sim", model="gpt-sim-large"),
        FallbackEvent(
            **scoped,
            from_tier=0,
            from_provider="openai-sim",
            from_model="gpt-sim-large",
            to_tier=1,
            to_provider="anthropic-sim",
            to_model="claude-sim-sonnet",
            reason="rate_limited",
            outcome=AttemptOutcome.RATE_LIMITED,
        ),
        RateLimitEvent(
            **scoped,
            provider="openai-sim",
            model="gpt-sim-large",
            source=RateLimitSource.PROVIDER_429,
            retry_after_s=2.0,
            cooldown=True,
        ),
        CircuitEvent(
            invocation_id=iid,
            config_version=VERSION,
            provider="openai-sim",
            state="open",
            failures=5,
            open_s=30.0,
        ),
        BudgetBreachEvent(
            **scoped,
            session_id="s-1",
            scope=BudgetScope.SESSION,
            estimated_tokens=5000,
            ceiling=4000.0,
            remaining=120.0,
            message="session budget exceeded",
        ),
        BudgetUnavailableEvent(**scoped, mode="allow", reason="nothing is serving the budget"),
        ConfigEvent(
            action="applied",
            version=7,
            applied_at=1_700_000_000.5,
            applied_by="ops@host",
            checksum="abc123",
            source="config",
            policy={"providers": {}, "workflows": {}},
            config_version=VERSION,
        ),
        ProviderBlockEvent(
            provider="openai-sim", blocked=True, reason="outage", by="ops@host", config_version=VERSION
        ),
        PassthroughEvent(
            **scoped,
            reason="cannot reach NATS",
            agent="triage-bot",
            status=Status.SUCCESS,
            provider="anthropic-sim",
            model="claude-sim-sonnet",
            prompt_tokens=12,
            completion_tokens=5,
        ),
        LeverEvent(
            lever="workflow.pause",
            target=WF,
            reason="runaway",
            by="ops",
            by_source="configured",
            changed=True,
            config_version=VERSION,
        ),
        ProbeEvent(
            invocation_id=f"probe-{iid}",
            provider="openai-sim",
            model="gpt-sim-large",
            outcome=AttemptOutcome.SERVER_ERROR,
            latency_ms=3.5,
            status_code=503,
            reason="HTTP 503: unavailable",
            by="ops",
            why="before unblocking",
            config_version=VERSION,
        ),
    ]


def test_every_kind_has_exactly_one_model():
    models = get_args(get_args(AnyEvent)[0])
    kinds = [m.model_fields["kind"].default for m in models]
    assert sorted(kinds) == sorted(EventKind)
    assert sorted(e.kind for e in samples("x")) == sorted(EventKind)


def test_a_stamped_event_decodes_as_its_own_model():
    for event in samples("inv-1"):
        stamped = event.model_copy(update={"event_id": "e1", "ts": 1.5, "env": "t", "service": "s"})
        decoded = codec.decode_event(codec.encode(stamped))
        assert type(decoded) is type(event)
        assert decoded.model_dump() == stamped.model_dump()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"event_id": ""}, "envelope lacks event_id"),
        ({"env": ""}, "envelope lacks env"),
        ({"kind": "no_such_kind"}, "tag .no_such_kind. found"),  # a kind without a model
        ({"status": "maybe"}, "at invocation.status"),
        ({"workflow": None}, "at invocation.workflow"),
    ],
)
def test_an_unstamped_unknown_or_malformed_event_is_a_decode_error(change, message):
    body = samples("inv-1")[0].model_dump(mode="json") | {
        "event_id": "e1",
        "ts": 1.5,
        "env": "t",
        "service": "s",
    }
    with pytest.raises(codec.DecodeError, match=message):
        codec.decode_event(codec.dumps(body | change))


async def stored(stack, event_id: str) -> bytes | None:
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        body = await conn.fetchval(
            "select body from events where env = $1 and event_id = $2", stack.env, event_id
        )
    finally:
        await conn.close()
    return body.encode() if body else None


async def test_every_kind_walks_from_emit_through_the_recorder_to_sbctl_trace(stack):
    await stack.start("recorder")
    iid = f"inv-{uuid.uuid4().hex[:8]}"
    # With NATS authentication on, the emitter connects as a service allowed to publish events.
    bus = await Bus.connect(
        stack.infra.nats_url, env=stack.env, service="emitter", settings=Settings(nats_user="gateway")
    )
    try:
        sent = {e.kind: await bus.emit(e) for e in samples(iid)}
    finally:
        await bus.drain(5)
    for event in sent.values():
        assert (event.env, event.service, event.config_version) == (stack.env, "emitter", VERSION)
        assert event.event_id and event.ts > 0

    async def traced() -> TraceReply | None:
        code, out, _ = await run_sbctl(stack.infra, "trace", iid, "--env", stack.env, "--json")
        reply = codec.decode(out.encode(), TraceReply) if code == 0 else None
        return reply if reply and reply.invocation and len(reply.events) == 9 else None

    reply = await wait_for(traced, timeout=30, interval=0.2, message="sbctl trace to show nine events")
    assert reply.invocation.model_dump() == sent[EventKind.INVOCATION].model_dump()
    by_kind = {e.kind: e for e in reply.events}
    # a probe is named by its own probe id, never an agent's invocation
    unscoped = (EventKind.CONFIG, EventKind.PROVIDER_BLOCK, EventKind.LEVER, EventKind.PROBE)
    scoped = set(EventKind) - set(unscoped)
    assert set(by_kind) == scoped
    for kind in scoped:
        assert type(by_kind[kind]) is type(sent[kind])
        assert by_kind[kind].model_dump() == sent[kind].model_dump(), kind

    # Events that name no agent's invocation are in the audit log, as the same models.
    for kind in unscoped:
        body = await wait_for(lambda k=kind: stored(stack, sent[k].event_id), message=f"the {kind} event")
        assert codec.decode_event(body).model_dump() == sent[kind].model_dump()

    code, out, err = await run_sbctl(stack.infra, "trace", iid, "--env", stack.env)
    assert code == 0, err
    assert f"invocation {iid}  workflow {WF}  status fallback" in out
    assert "asked max_tokens 64, prompt estimate 13" in out
    for line in (
        "tier 0 openai-sim/gpt-sim-large: rate_limited (3.25 ms)",
        "tier 0 openai-sim/gpt-sim-large: call a1 started",
        "openai-sim/gpt-sim-large -> anthropic-sim/claude-sim-sonnet: rate_limited",
        "openai-sim/gpt-sim-large: provider_429",
        "openai-sim: circuit open after 5 failures for 30s",
        "session: session budget exceeded",
        "allow: nothing is serving the budget",
        "fallback via anthropic-sim/claude-sim-sonnet",
        "UNENFORCED success via anthropic-sim/claude-sim-sonnet by agent triage-bot: cannot reach NATS",
    ):
        assert line in out, line

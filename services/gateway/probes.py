"""Probe calls: a few real calls to one provider, asked for by an operator to see whether a
blocked provider has recovered before unblocking it (`sbctl provider probe`).

They go through the provider's normal adapter (same client, URL, key and failure classification
as live traffic) but outside every workflow: no tier is planned (a block does not stop them, no
quota is taken), no outcome is reported (no circuit or cooldown changes), the budget is not
asked (no agent's session or daily ledger is charged), and each call is recorded in the audit
log as a `probe` event under its own `probe-...` id, never as an invocation."""

from __future__ import annotations

import time
import uuid

from shared.contracts import AttemptOutcome, Message, ProbeCall, ProbeEvent, ProbeReply, ProbeRequest
from shared.providers import ProviderCallError
from shared.providers.base import CallParams
from switchboard_sdk import errors

PROMPT = [Message(role="user", content="Health probe: reply with the single word OK.")]
PARAMS = CallParams(max_tokens=8)


async def probe(gw, req: ProbeRequest) -> ProbeReply:
    """`req.count` calls one after another; each outcome and latency as the adapter saw it."""
    active = gw.config.active
    spec = active.policy.providers.get(req.provider)
    adapter = gw.providers.get(req.provider)
    if spec is None or adapter is None:
        raise errors.NotFound(f"no provider named {req.provider!r} in policy {active.version}")
    model = req.model or next(iter(spec.models))
    if model not in spec.models:
        raise errors.NotFound(f"provider {req.provider!r} has no model {model!r} in policy {active.version}")
    calls = []
    for _ in range(req.count):
        call = await _one(adapter, model, req.timeout_s)
        calls.append(call)
        gw.bus.emit_later(
            ProbeEvent(
                invocation_id=call.invocation_id,
                provider=req.provider,
                model=model,
                outcome=call.outcome,
                latency_ms=call.latency_ms,
                status_code=call.status_code,
                reason=call.reason,
                prompt_tokens=call.prompt_tokens,
                completion_tokens=call.completion_tokens,
                by=req.by,
                why=req.why,
                config_version=active.version,
            )
        )
    return ProbeReply(provider=req.provider, model=model, config_version=active.version, calls=calls)


async def _one(adapter, model: str, timeout_s: float) -> ProbeCall:
    probe_id = f"probe-{uuid.uuid4().hex[:16]}"
    t0 = time.perf_counter()
    try:
        completion = await adapter.complete(model, PROMPT, PARAMS, timeout_s)
    except ProviderCallError as exc:
        return ProbeCall(
            invocation_id=probe_id,
            outcome=exc.outcome,
            latency_ms=_ms_since(t0),
            status_code=exc.status_code,
            reason=exc.message,
        )
    return ProbeCall(
        invocation_id=probe_id,
        outcome=AttemptOutcome.OK,
        latency_ms=_ms_since(t0),
        status_code=200,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
    )


def _ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)

"""sbctl drill provider-outage: drive every workflow that uses a provider with invocations that
route around it, read the fallback activations back from the audit log, judge completion and
latency against the fallback tier's SLO. Exits non-zero when a workflow has no surviving path or
misses its SLO.

Only the drill's own invocations avoid the provider (they carry DRILL_AVOID_METADATA, which the
router honours for them alone): live traffic keeps using it, and a drill that is killed leaves
nothing behind, because it never changed any shared state."""

from __future__ import annotations

import asyncio
import time
import uuid

from shared import names
from shared.bus import Bus
from shared.contracts import DRILL_AVOID_METADATA, EventCountReply, EventCountRequest, Status
from shared.live_config import ConfigStore
from shared.policy import Policy, WorkflowSpec, expand_or_raise
from shared.sbctl.context import connect
from shared.sbctl.output import emit_json, fail, table
from switchboard_sdk import Client, errors

COMPLETED = {Status.SUCCESS, Status.FALLBACK}


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] if ordered else 0.0


def fallback_tier(workflow: WorkflowSpec, provider: str):
    return next((t for t in workflow.tiers if t.provider != provider), None)


async def _drive(client: Client, workflow: str, avoid: str, count: int, concurrency: int, timeout: float):
    gate = asyncio.Semaphore(concurrency)
    run_id = uuid.uuid4().hex[:8]

    async def one(i: int):
        async with gate:
            t0 = time.perf_counter()
            try:
                result = await client.invoke(
                    workflow,
                    f"Drill {run_id}: synthetic request {i}.",
                    timeout=timeout,
                    invocation_id=f"drill-{run_id}-{workflow}-{i}",
                    metadata={"drill": "provider-outage", DRILL_AVOID_METADATA: avoid},
                    agent="sbctl-drill",
                )
            except errors.SwitchboardError as exc:
                return None, exc.code, (time.perf_counter() - t0) * 1000
            code = result.error.code if result.error else result.status.value
            return result, code, (time.perf_counter() - t0) * 1000

    return await asyncio.gather(*(one(i) for i in range(count)))


async def _recorded_fallbacks(bus: Bus, env: str, ids: list[str], expected: int, wait_s: float) -> int:
    """Fallback events the recorder holds for `ids`, waiting up to `wait_s` for `expected`."""
    deadline = time.monotonic() + wait_s
    while True:
        reply = await bus.request(
            names.recorder_count(env),
            EventCountRequest(kind="fallback", invocation_ids=ids),
            EventCountReply,
            timeout=5.0,
        )
        if reply.error:
            raise errors.from_wire(reply.error)
        if reply.invocations >= expected or time.monotonic() > deadline:
            return reply.invocations
        await asyncio.sleep(0.2)


async def provider_outage(args, settings) -> int:
    env, provider = args.env, args.provider
    bus = await connect(settings)
    try:
        doc = await ConfigStore(bus.js, env).current()
        if doc is None:
            fail(
                f"no policy version is applied in env {env}; run `sbctl config apply` first",
                code="not_found",
                as_json=args.json,
            )
        policy = Policy.model_validate(expand_or_raise(doc.policy))
        if provider not in policy.providers:
            fail(
                f"no provider named {provider!r} in policy version {doc.version}",
                code="not_found",
                as_json=args.json,
            )
        affected = {n: w for n, w in policy.workflows.items() if any(t.provider == provider for t in w.tiers)}
        if not affected:
            fail(f"no workflow uses {provider!r}; nothing to drill", code="not_found", as_json=args.json)
        rows = []
        async with Client(settings.nats_url, env=env) as client:
            for name, workflow in affected.items():
                rows.append(await _judge(bus, env, client, name, workflow, provider, args))
    finally:
        await bus.drain(5)
    ok = all(r["verdict"] == "pass" for r in rows)
    if args.json:
        emit_json(
            {
                "ok": ok,
                "provider": provider,
                "env": env,
                "config_version": doc.version,
                "workflows": rows,
            }
        )
    else:
        print(
            f"drill provider-outage: the drill's invocations avoided {provider} in env {env}"
            f" (policy version {doc.version}); live traffic was not touched"
        )
        print(
            table(
                rows,
                [
                    "workflow",
                    "invocations",
                    "completed",
                    "completion",
                    "fallbacks_recorded",
                    "fallback_tier",
                    "p99_ms",
                    "slo_p99_ms",
                    "verdict",
                ],
            )
        )
        print("PASS" if ok else "FAIL: a workflow has no surviving path or misses its fallback tier's SLO")
    return 0 if ok else 1


async def _judge(
    bus: Bus, env: str, client: Client, name: str, workflow: WorkflowSpec, provider: str, args
) -> dict:
    results = await _drive(client, name, provider, args.invocations, args.concurrency, args.timeout)
    completed = [r for r, _, _ in results if r is not None and r.status in COMPLETED]
    ids = [r.invocation_id for r in completed if r.status is Status.FALLBACK]
    recorded = await _recorded_fallbacks(bus, env, ids, len(ids), args.wait) if ids else 0
    tier = fallback_tier(workflow, provider)
    latency = p99([ms for r, _, ms in results if r is not None and r.status in COMPLETED])
    slo = tier.slo_p99_ms if tier else None
    completion = len(completed) / len(results)
    problems = []
    if tier is None:
        problems.append("no tier at another provider")
    if completion < args.min_completion:
        outcomes = sorted({code for r, code, _ in results if r is None or r.status not in COMPLETED})
        problems.append(f"completion {completion:.0%} ({', '.join(outcomes)})")
    if slo is not None and completed and latency > slo:
        problems.append(f"p99 {latency:.0f} ms over SLO {slo} ms")
    if recorded < len(ids):
        problems.append(f"only {recorded} of {len(ids)} fallbacks in the audit log")
    return {
        "workflow": name,
        "invocations": len(results),
        "completed": len(completed),
        "completion": f"{completion:.0%}",
        "fallbacks_recorded": recorded,
        "fallback_tier": f"{tier.provider}/{tier.model}" if tier else None,
        "p99_ms": round(latency, 1),
        "slo_p99_ms": slo,
        "verdict": "pass" if not problems else "; ".join(problems),
    }

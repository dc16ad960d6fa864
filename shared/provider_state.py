"""The router's provider state as a read-only view: operator blocks, 429 cooldowns and open
circuits, for a gateway that cannot reach the router.

The router owns these keys (shared/keys.py) and is the only writer; it plans with quotas too,
which only it may debit. A gateway planning without it still routes around what an operator
or a provider has said (blocked, cooling down, circuit open), reading the same keys in one
pipeline, and leaves quotas alone. The skip reasons are the router's own wording.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from shared import keys
from shared.contracts import PlannedTier, SkippedTier

SKIP_REASONS = {
    "blocked": "blocked by operator: {}",
    "cooldown": "cooling down after a 429 ({} ms left)",
    "circuit_open": "circuit open ({} ms left)",
    "local_quota": "out of quota: {}",
    "drill": "avoided by a drill of {} (this invocation only)",
}


async def unavailable(redis: aioredis.Redis, env: str, tiers: list[PlannedTier]) -> dict[int, SkippedTier]:
    """The tiers (by tier index) an operator block, a cooldown or an open circuit rules out now.
    Raises redis errors: the caller decides what an unreadable state means."""
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.provider_blocks(env))
    for t in tiers:
        pipe.pttl(keys.cooldown(env, t.provider, t.model))
        pipe.pttl(keys.circuit_open(env, t.provider))
    results = await pipe.execute()
    blocked = {k.decode(): v.decode() for k, v in results[0].items()}
    out = {}
    for i, t in enumerate(tiers):
        cooldown_ms, circuit_ms = results[1 + 2 * i], results[2 + 2 * i]
        if t.provider in blocked:
            source, detail = "blocked", blocked[t.provider]
        elif cooldown_ms > 0:
            source, detail = "cooldown", cooldown_ms
        elif circuit_ms > 0:
            source, detail = "circuit_open", circuit_ms
        else:
            continue
        out[t.tier] = SkippedTier(
            tier=t.tier,
            provider=t.provider,
            model=t.model,
            reason=SKIP_REASONS[source].format(detail),
            source=source,
        )
    return out

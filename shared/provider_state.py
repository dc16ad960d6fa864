"""Provider state in Redis: the contract between the router, which keeps it, and the gateways,
which plan from it.

Keys (built by shared/keys.py, prefixed by `SB_ENV`):

- `provider_blocks` hash, provider -> reason: operator blocks (`sbctl provider block`).
- `cooldown` per provider/model, present while it cools down after a 429 (TTL = the wait).
- `circuit_failures` per provider: consecutive failed calls; `circuit_open` per provider,
  present while its circuit is open (TTL = the open time).
- `quota` per provider and per provider/model: a hash {m: Redis-clock minute, req, tok} of
  this minute's use, expiring two minutes after its last write.

Writers. The router owns blocks, cooldowns, circuits and the token counts: it writes them
from outcome reports (services/router/lua/record_outcome_v1.lua) and operator requests, and
reads them all for status and headroom. A gateway plans in its own process with one call of
`acquire_tier_v1` (shared/lua/), which reads blocks, cooldowns, circuits and quotas and, for
the tier it hands out, counts one request against both quotas: the only write a gateway makes
here. Router and gateways share the script's file, so both read the state with the same rules;
a change to the layout or to what the script returns is a new script version (`_v2`) that
every gateway and router understand before it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from shared import keys
from shared.policy import Policy, TierSpec

ACQUIRE_SCRIPT = Path(__file__).parent / "lua" / "acquire_tier_v1.lua"

# How a skip reads in attempts, events and logs, by the script's status.
SKIP_REASONS = {
    "blocked": "blocked by operator: {}",
    "cooldown": "cooling down after a 429 ({} ms left)",
    "circuit_open": "circuit open ({} ms left)",
    "local_quota": "out of quota: {}",
    "drill": "avoided by a drill of {} (this invocation only)",
}


@dataclass(frozen=True, slots=True)
class TierCheck:
    index: int
    status: str  # "ok" | "blocked" | "cooldown" | "circuit_open" | "local_quota"
    detail: str


class TierAcquirer:
    """`acquire_tier_v1` over a policy's tiers: one atomic Redis call per plan."""

    def __init__(self, redis: aioredis.Redis, env: str) -> None:
        self.env = env
        self._script = redis.register_script(ACQUIRE_SCRIPT.read_text())

    async def acquire(self, policy: Policy, tiers: list[TierSpec], start: int) -> list[TierCheck]:
        """Checks of tiers[start:] in order, up to and including the one acquired (status ok).
        Raises redis errors: the caller decides what an unreadable state means."""
        env = self.env
        script_keys = [keys.provider_blocks(env)]
        args: list = [len(tiers) - start]
        for tier in tiers[start:]:
            provider = policy.providers[tier.provider]
            model = provider.models[tier.model]
            script_keys += [
                keys.cooldown(env, tier.provider, tier.model),
                keys.circuit_open(env, tier.provider),
                keys.quota(env, tier.provider),
                keys.quota(env, f"{tier.provider}/{tier.model}"),
            ]
            args += [
                tier.provider,
                provider.quota.rpm or 0,
                provider.quota.tpm or 0,
                model.quota.rpm or 0,
                model.quota.tpm or 0,
            ]
        flat = await self._script(keys=script_keys, args=args)
        return [
            TierCheck(start + i // 2, flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)
        ]

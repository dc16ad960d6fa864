"""Shared provider state in Redis (the key layout and who writes what: shared/provider_state.py):
operator blocks, 429 cooldowns, circuit breakers and per-minute quotas. Every router replica and
every gateway sees the same state, and every change is one atomic Lua call or Redis command."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from shared import keys
from shared.contracts import AttemptOutcome, ModelState, ProviderState, TierOutcome
from shared.policy import Policy, ProviderSpec

LUA = Path(__file__).parent / "lua"
FAILURES = {
    AttemptOutcome.SERVER_ERROR,
    AttemptOutcome.TIMEOUT,
    AttemptOutcome.CONNECTION_ERROR,
    AttemptOutcome.MALFORMED,
}


class ProviderHealth:
    """The router's side of the provider state (shared/provider_state.py): it writes blocks,
    cooldowns, circuits and token counts, and reads everything for status and headroom."""

    def __init__(self, redis: aioredis.Redis, env: str) -> None:
        self.redis = redis
        self.env = env
        self._record = redis.register_script((LUA / "record_outcome_v1.lua").read_text())

    async def record(self, spec: ProviderSpec, outcome: TierOutcome) -> tuple[int, bool]:
        """Apply one call's outcome; returns (consecutive failures, circuit open)."""
        env, provider, model = self.env, outcome.provider, outcome.model
        kind = (
            "ok"
            if outcome.outcome is AttemptOutcome.OK
            else "rate_limited"
            if outcome.outcome is AttemptOutcome.RATE_LIMITED
            else "failure"
            if outcome.outcome in FAILURES
            else "neutral"
        )
        cooldown_ms = 0
        if kind == "rate_limited" and spec.cooldown.enabled:
            wait = outcome.retry_after_s if outcome.retry_after_s is not None else spec.cooldown.default_s
            cooldown_ms = int(min(wait, spec.cooldown.max_s) * 1000)
        failures, is_open = await self._record(
            keys=[
                keys.cooldown(env, provider, model),
                keys.circuit_failures(env, provider),
                keys.circuit_open(env, provider),
                keys.quota(env, provider),
                keys.quota(env, f"{provider}/{model}"),
            ],
            args=[kind, outcome.tokens, cooldown_ms, spec.circuit.failures, int(spec.circuit.open_s * 1000)],
        )
        return int(failures), bool(is_open)

    async def block(self, provider: str, reason: str) -> None:
        await self.redis.hset(keys.provider_blocks(self.env), provider, reason)

    async def unblock(self, provider: str) -> None:
        await self.redis.hdel(keys.provider_blocks(self.env), provider)

    async def status(self, policy: Policy, only: str | None = None) -> list[ProviderState]:
        """Blocks, circuits, cooldowns and quota headroom of every provider and model (one pipeline)."""
        env = self.env
        names = [p for p in policy.providers if only in (None, p)]
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.provider_blocks(env))
        pipe.time()
        for name in names:
            pipe.pttl(keys.circuit_open(env, name))
            pipe.get(keys.circuit_failures(env, name))
            pipe.hmget(keys.quota(env, name), "m", "req", "tok")
            for model in policy.providers[name].models:
                pipe.pttl(keys.cooldown(env, name, model))
                pipe.hmget(keys.quota(env, f"{name}/{model}"), "m", "req", "tok")
        results = iter(await pipe.execute())
        blocked = {k.decode(): v.decode() for k, v in next(results).items()}
        minute = str(int(next(results)[0]) // 60).encode()
        out = []
        for name in names:
            spec = policy.providers[name]
            circuit_ms, failures, counts = next(results), next(results), next(results)
            req, tok = _counts(counts, minute)
            state = ProviderState(
                provider=name,
                kind=spec.kind.value,
                blocked=blocked.get(name),
                circuit_open_ms=max(0, circuit_ms),
                consecutive_failures=int(failures or 0),
                requests_this_minute=req,
                tokens_this_minute=tok,
                rpm=spec.quota.rpm,
                tpm=spec.quota.tpm,
                request_headroom=_headroom(spec.quota.rpm, req),
                token_headroom=_headroom(spec.quota.tpm, tok),
            )
            for model, mspec in spec.models.items():
                cooldown_ms, mcounts = next(results), next(results)
                mreq, mtok = _counts(mcounts, minute)
                state.models.append(
                    ModelState(
                        model=model,
                        cooldown_ms=max(0, cooldown_ms),
                        requests_this_minute=mreq,
                        tokens_this_minute=mtok,
                        rpm=mspec.quota.rpm,
                        tpm=mspec.quota.tpm,
                        request_headroom=_headroom(mspec.quota.rpm, mreq),
                        token_headroom=_headroom(mspec.quota.tpm, mtok),
                    )
                )
            out.append(state)
        return out


def _counts(values: list, minute: bytes) -> tuple[int, int]:
    m, req, tok = values
    if m != minute:
        return 0, 0
    return int(req or 0), int(tok or 0)


def _headroom(limit: int | None, used: int) -> int | None:
    return None if limit is None else max(0, limit - used)

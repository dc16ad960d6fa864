"""A decided review is acted on once. The hitl service asks again until it hears back (it may
have crashed, or its request timed out); the first ask marks the review id in flight in Redis,
the finished result replaces the marker, and a later ask gets that result without a second call.
The marker lives as long as the workflow's worst case: a gateway killed in the middle of a
resume leaves a review that is acted on again once it expires (the one window in which a model
may be called twice).
Unlike the idempotency of new invocations, an unreachable Redis refuses the resume: the hitl
service will ask again, and a model call twice is the one thing a review must not cause."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared import keys
from switchboard_sdk import errors

IN_FLIGHT = b"\x00"


class Resumes:
    def __init__(self, redis: aioredis.Redis, env: str) -> None:
        self.redis = redis
        self.env = env

    async def begin(self, review_id: str, ttl_s: float) -> bytes | None:
        """None when this call is the first; the stored result when it was acted on before."""
        key = keys.resume(self.env, review_id)
        try:
            if await self.redis.set(key, IN_FLIGHT, nx=True, px=int(ttl_s * 1000)):
                return None
            stored = await self.redis.get(key)
        except RedisError as exc:
            raise errors.Unavailable(f"cannot mark review {review_id} in flight: {exc!r}") from exc
        if stored is None or stored == IN_FLIGHT:
            raise errors.DuplicateInFlight(f"review {review_id} is being acted on")
        return stored

    async def finish(self, review_id: str, result: bytes, ttl_s: float) -> None:
        await self.redis.set(keys.resume(self.env, review_id), result, ex=int(ttl_s))

    async def forget(self, review_id: str) -> None:
        try:
            await self.redis.delete(keys.resume(self.env, review_id))
        except RedisError:
            pass

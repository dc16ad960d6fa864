"""A decided review is acted on once. The hitl service asks again until it hears back (it may
have crashed, or its request timed out); the first ask marks the review id in flight in Redis,
the finished result replaces the marker, and a later ask gets that result without a second call.
The marker is a lease (`leases.py`), kept alive while this gateway acts on the review: a gateway
killed in the middle of a resume leaves a review that is acted on again once the marker lapses,
within `claim_ttl_s` (the one window in which a model may be called twice; both calls are in
the audit log, the dead one as an `attempt_started` that never finished).
Unlike the idempotency of new invocations, an unreachable Redis refuses the resume: the hitl
service will ask again, and a model call twice is the one thing a review must not cause."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.gateway.leases import Leases
from shared import keys
from switchboard_sdk import errors

IN_FLIGHT = b"\x00"


class Resumes:
    def __init__(self, redis: aioredis.Redis, env: str, leases: Leases) -> None:
        self.redis = redis
        self.env = env
        self.leases = leases

    async def begin(self, review_id: str, max_in_flight_s: float) -> bytes | None:
        """None when this call is the first (the review is then held in flight by this process,
        for at most `max_in_flight_s`); the stored result when it was acted on before."""
        key = keys.resume(self.env, review_id)
        try:
            if await self.redis.set(key, IN_FLIGHT, nx=True, px=self.leases.ttl_ms):
                self.leases.hold(key, max_in_flight_s)
                return None
            stored = await self.redis.get(key)
        except RedisError as exc:
            raise errors.Unavailable(f"cannot mark review {review_id} in flight: {exc!r}") from exc
        if stored is None or stored == IN_FLIGHT:
            raise errors.DuplicateInFlight(f"review {review_id} is being acted on")
        return stored

    async def finish(self, review_id: str, result: bytes, ttl_s: float) -> None:
        key = keys.resume(self.env, review_id)
        self.leases.drop(key)
        await self.redis.set(key, result, ex=int(ttl_s))

    async def forget(self, review_id: str) -> None:
        key = keys.resume(self.env, review_id)
        self.leases.drop(key)
        try:
            await self.redis.delete(key)
        except RedisError:
            pass

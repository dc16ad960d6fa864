"""The invocation id is the idempotency key: a retried request gets the first one's result.

One round trip on the common path (SET NX of an in-flight marker); the finished result
replaces the marker for a day. When Redis is unreachable the invocation still runs: losing
de-duplication is better than refusing every call.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared import errors, keys

log = logging.getLogger("switchboard.gateway")
IN_FLIGHT = b"\x00"
RESULT_TTL_S = 24 * 3600


class Idempotency:
    def __init__(self, redis: aioredis.Redis, env: str) -> None:
        self.redis = redis
        self.env = env

    async def begin(self, invocation_id: str, in_flight_ttl_s: float) -> bytes | None:
        """None when this call is the first; the stored reply when it already finished."""
        key = keys.idempotency(self.env, invocation_id)
        try:
            if await self.redis.set(key, IN_FLIGHT, nx=True, px=int(in_flight_ttl_s * 1000)):
                return None
            stored = await self.redis.get(key)
        except RedisError as exc:
            log.warning("idempotency unavailable", extra={"error": repr(exc), "invocation_id": invocation_id})
            return None
        if stored is None:  # expired between the two calls: treat as new
            return None
        if stored == IN_FLIGHT:
            raise errors.DuplicateInFlight(f"invocation {invocation_id} is already in flight")
        return stored

    async def finish(self, invocation_id: str, reply: bytes) -> None:
        try:
            await self.redis.set(keys.idempotency(self.env, invocation_id), reply, ex=RESULT_TTL_S)
        except RedisError as exc:
            log.warning(
                "idempotency result not stored", extra={"error": repr(exc), "invocation_id": invocation_id}
            )

    async def forget(self, invocation_id: str) -> None:
        """Drop the marker of a call that was refused before doing anything, so it may be retried."""
        try:
            await self.redis.delete(keys.idempotency(self.env, invocation_id))
        except RedisError:
            pass

"""The invocation id is the idempotency key: a retried request gets the first one's result.

One round trip on the common path (SET NX of an in-flight marker), asked at the same time as
the router and the budget; the finished result replaces the marker for a day, written in
batches after the reply. When Redis is unreachable the invocation still runs: losing
de-duplication is better than refusing every call.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.gateway.batching import Batcher
from shared import errors, keys

log = logging.getLogger("switchboard.gateway")
IN_FLIGHT = b"\x00"
RESULT_TTL_S = 24 * 3600


class Replay(Exception):
    """The invocation id already finished: answer with the stored reply, do nothing else."""

    def __init__(self, stored: bytes) -> None:
        super().__init__("replay")
        self.stored = stored


class Idempotency:
    def __init__(self, redis: aioredis.Redis, env: str) -> None:
        self.redis = redis
        self.env = env
        self.results: Batcher[tuple[str, bytes]] = Batcher(
            "idempotency", self._store, interval_s=0.01, max_items=256
        )

    async def begin(self, invocation_id: str, in_flight_ttl_s: float) -> None:
        """Returns when this call is the first; raises `Replay` or `DuplicateInFlight` otherwise."""
        key = keys.idempotency(self.env, invocation_id)
        try:
            if await self.redis.set(key, IN_FLIGHT, nx=True, px=int(in_flight_ttl_s * 1000)):
                return
            stored = await self.redis.get(key)
        except RedisError as exc:
            log.warning("idempotency unavailable", extra={"error": repr(exc), "invocation_id": invocation_id})
            return
        if stored is None:  # expired between the two calls: treat as new
            return
        if stored == IN_FLIGHT:
            raise errors.DuplicateInFlight(f"invocation {invocation_id} is already in flight")
        raise Replay(stored)

    def finish(self, invocation_id: str, reply: bytes) -> None:
        self.results.add((invocation_id, reply))

    async def _store(self, results: list[tuple[str, bytes]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for invocation_id, reply in results:
            pipe.set(keys.idempotency(self.env, invocation_id), reply, ex=RESULT_TTL_S)
        await pipe.execute()

    async def forget(self, invocation_id: str) -> None:
        """Drop the marker of a call that failed before doing anything, so it may be retried."""
        try:
            await self.redis.delete(keys.idempotency(self.env, invocation_id))
        except RedisError:
            pass

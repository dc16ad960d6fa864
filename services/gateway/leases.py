"""In-flight markers kept alive by the process that holds them.

An invocation id claimed by this gateway (and a review being acted on) is marked in Redis with a
short TTL, and one task refreshes every marker this process holds in a single pipeline, a few
times per TTL. While the process lives, a retry of the id is answered `duplicate_in_flight`;
once it dies, its markers lapse within one TTL and a retry runs (see docs/reliability.md).

A refresh is `PEXPIRE key ttl GT`: it never shortens a key, so a marker that has just been
replaced by its stored reply (kept for a day) is left as it is, and a marker deleted meanwhile
stays deleted. A marker is refreshed for at most its holder's worst case (`hold(key, max_s)`):
a holder that never lets go cannot keep an id in flight for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("switchboard.gateway")
REFRESHES_PER_TTL = 4  # a marker survives a stall of the event loop of three quarters of its TTL


class Leases:
    def __init__(self, redis: aioredis.Redis, ttl_s: float) -> None:
        self.redis = redis
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._until: dict[str, float] = {}  # key -> monotonic time after which it is let lapse
        self._task: asyncio.Task | None = None

    def hold(self, key: str, max_s: float) -> None:
        """Keep `key` alive from now until `drop(key)`, for at most `max_s`."""
        self._until[key] = time.monotonic() + max_s

    def drop(self, key: str) -> None:
        self._until.pop(key, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _refresh_forever(self) -> None:
        interval = self.ttl_ms / 1000 / REFRESHES_PER_TTL
        while True:
            await asyncio.sleep(interval)
            await self.refresh()

    async def refresh(self) -> None:
        """Extend every held marker to a full TTL, in one round trip."""
        now = time.monotonic()
        for key in [k for k, until in self._until.items() if until <= now]:
            del self._until[key]
        if not self._until:
            return
        pipe = self.redis.pipeline(transaction=False)
        for key in self._until:
            pipe.pexpire(key, self.ttl_ms, gt=True)
        try:
            await pipe.execute()
        except RedisError as exc:
            log.warning(
                "in-flight markers not refreshed", extra={"held": len(self._until), "error": repr(exc)}
            )

"""Work that need not happen once per invocation, done for many at a time.

After the reply, some writes only have to land soon, not now: the router's bookkeeping of
successful calls. A `Batcher` collects them and flushes every
few milliseconds (sooner when many are waiting) in one round trip, taking per-invocation
awaits off the hot path. Shutdown flushes what is left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("switchboard.gateway")
T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(
        self, name: str, flush: Callable[[list[T]], Awaitable[None]], *, interval_s: float, max_items: int
    ) -> None:
        self.name = name
        self._flush = flush
        self._interval_s = interval_s
        self._max_items = max_items
        self._items: list[T] = []
        self._full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def add(self, item: T) -> None:
        self._items.append(item)
        if len(self._items) >= self._max_items:
            self._full.set()

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._full.wait(), self._interval_s)
            except TimeoutError:
                pass
            await self._drain()

    async def _drain(self) -> None:
        self._full.clear()
        if not self._items:
            return
        items, self._items = self._items, []
        try:
            await self._flush(items)
        except Exception as exc:  # a lost batch of best-effort writes must not stop the next ones
            log.warning(
                "batch flush failed", extra={"batch": self.name, "items": len(items), "error": repr(exc)}
            )

    async def close(self) -> None:
        # A flag and a wake-up, not task.cancel(): on Python 3.11 wait_for() can swallow a
        # cancellation that lands as its inner wait completes, and the loop would run on.
        self._closing = True
        self._full.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self._drain()

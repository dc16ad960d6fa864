"""A bounded local spool for events JetStream could not take.

When a publish is not acknowledged (JetStream or all of NATS unreachable), the event is kept in
this process's memory, in order, and re-published in the background until JetStream takes it;
while anything waits, new events queue behind it. Re-publishing keeps each event's
`Nats-Msg-Id`, and the recorder writes by event id, so an event that was stored after all is
never recorded twice.

The bound is in bytes (`max_bytes`, 256 MiB by default: about ten minutes of events at a few
hundred invocations per second). Past it, new events are dropped, counted in
`switchboard_event_publish_failures_total` and logged one by one. The spool lives in memory:
events still in it when the process stops (or is killed) are lost, and a clean stop says how
many.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from shared.telemetry import metrics

log = logging.getLogger("switchboard.bus")
SPOOL_MAX_BYTES = 256 * 1024 * 1024
FLUSH_BATCH = 64


@dataclass(frozen=True, slots=True)
class Spooled:
    subject: str
    data: bytes
    headers: dict
    kind: str
    event_id: str


class EventSpool:
    def __init__(self, js, *, max_bytes: int = SPOOL_MAX_BYTES, publish_timeout_s: float = 2.0) -> None:
        self._js = js
        self.max_bytes = max_bytes
        self._timeout = publish_timeout_s
        self._items: deque[Spooled] = deque()
        self._bytes = 0
        self._task: asyncio.Task | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Spooled) -> bool:
        """Keep an event for later; False (and counted as lost) when the spool is full."""
        if self._bytes + len(item.data) > self.max_bytes:
            metrics.EVENT_PUBLISH_FAILURES.labels(item.kind).inc()
            log.error("event lost: spool full", extra={"kind": item.kind, "event_id": item.event_id})
            return False
        self._items.append(item)
        self._bytes += len(item.data)
        metrics.EVENT_SPOOL_DEPTH.set(len(self._items))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._flush_forever())
        return True

    async def _flush_forever(self) -> None:
        delay = 0.2
        while self._items:
            batch = [self._items.popleft() for _ in range(min(FLUSH_BATCH, len(self._items)))]
            results = await asyncio.gather(*map(self._send, batch), return_exceptions=True)
            failed = [i for i, r in zip(batch, results, strict=True) if isinstance(r, BaseException)]
            for item, result in zip(batch, results, strict=True):
                if not isinstance(result, BaseException):
                    self._bytes -= len(item.data)
                    metrics.EVENTS_PUBLISHED.labels(item.kind).inc()
            self._items.extendleft(reversed(failed))  # back at the front, in their order
            metrics.EVENT_SPOOL_DEPTH.set(len(self._items))
            if failed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                delay = 0.2
        log.info("event spool flushed")

    async def _send(self, item: Spooled) -> None:
        await self._js.publish(item.subject, item.data, headers=item.headers, timeout=self._timeout)

    async def wait_empty(self, timeout: float) -> bool:
        """Give the spool until `timeout` to reach JetStream; True when it is empty."""
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                pass
        return not self._items

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._items:
            log.error("spooled events lost at shutdown", extra={"events": len(self._items)})
            for item in self._items:
                metrics.EVENT_PUBLISH_FAILURES.labels(item.kind).inc()
            self._items.clear()
            metrics.EVENT_SPOOL_DEPTH.set(0)

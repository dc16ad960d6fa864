"""Settles that arrive. A settle is published at once (before the reply, on the same connection)
with a reply subject, and again every second until a budget replica acknowledges it, for at most
the reservation's lifetime.

A core publish alone is lost when no budget replica is subscribed at that moment (a budget
restart, NATS reconnecting) or the budget's Redis is down: the call's tokens and spend then never
reach the ledgers. A repeat is harmless: a settle that finds no held reservation changes nothing.
Past the reservation's lifetime the hold has expired and a settle could only be ignored, so the
settle is given up and logged; a gateway killed with settles pending loses them (they are held
in this process only).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass

from nats.aio.msg import Msg

from shared import codec, names
from shared.bus import Bus
from shared.contracts import SettleReply, SettleRequest

log = logging.getLogger("switchboard.gateway")
RETRY_S = 1.0


@dataclass
class _Pending:
    settle: SettleRequest
    give_up_at: float
    next_at: float


class Settler:
    def __init__(self, bus: Bus, env: str) -> None:
        self.bus = bus
        self.subject = names.budget_settle(env)
        self.inbox = bus.nc.new_inbox()
        self.pending: dict[str, _Pending] = {}
        self._seq = itertools.count()
        self._sub = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._empty = asyncio.Event()
        self._empty.set()

    async def start(self) -> None:
        self._sub = await self.bus.nc.subscribe(f"{self.inbox}.*", cb=self._on_ack)
        self._task = asyncio.create_task(self._retry_forever())

    async def send(self, settle: SettleRequest, lifetime_s: float) -> None:
        """Publish now; keep it until acknowledged or `lifetime_s` (the reservation's) passes."""
        token = str(next(self._seq))
        now = time.monotonic()
        self.pending[token] = _Pending(settle, now + lifetime_s, now + RETRY_S)
        self._empty.clear()
        await self._publish(token, settle)

    async def _publish(self, token: str, settle: SettleRequest) -> None:
        try:
            await self.bus.nc.publish(self.subject, codec.encode(settle), reply=f"{self.inbox}.{token}")
        except Exception as exc:  # closed or reconnecting: the retry loop sends it again
            log.warning("settle not sent", extra={"invocation_id": settle.invocation_id, "error": repr(exc)})

    async def _on_ack(self, msg: Msg) -> None:
        try:
            reply = codec.decode(msg.data, SettleReply)
        except codec.DecodeError:
            return
        if reply.error is None:  # an error (the budget's Redis down) is retried
            self._done(msg.subject.rsplit(".", 1)[-1])

    def _done(self, token: str) -> None:
        self.pending.pop(token, None)
        if not self.pending:
            self._empty.set()

    async def _retry_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(RETRY_S / 4)
            now = time.monotonic()
            for token, p in list(self.pending.items()):
                if now >= p.give_up_at:
                    self._done(token)
                    log.error(
                        "settle given up: the reservation has expired",
                        extra={"invocation_id": p.settle.invocation_id, "workflow": p.settle.workflow},
                    )
                elif now >= p.next_at:
                    p.next_at = now + RETRY_S
                    await self._publish(token, p.settle)

    async def close(self, timeout: float) -> None:
        """Wait (at most `timeout`) for pending settles to be acknowledged, then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), timeout)
        if self.pending:
            log.error("settles still pending at shutdown", extra={"pending": len(self.pending)})
        self._closing = True
        if self._task is not None:
            await self._task
        if self._sub is not None:
            await self._sub.unsubscribe()

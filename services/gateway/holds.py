"""A streamed invocation's budget reservation, kept held for as long as its stream relays.

A reservation lasts the workflow's reservation_ttl_s, which the policy makes longer than every
tier's timeout together; but a tier's timeout bounds only the wait for a stream's next chunk, so
a stream may outlive its reservation, and its tokens would then be held by nothing and its late
settle ignored. While a stream relays, one task per stream asks the budget (which alone touches
its keys) to extend the hold, once every quarter of the TTL: never a request per chunk.

The hold is known to last until the send time of the last extend the budget acknowledged, plus
the TTL. An extend that fails (no budget replica, its Redis down) is tried again a quarter of the
TTL later. Once less than half the TTL is known to be held (two extends in a row failed), or the
budget says the hold is gone (a retry of the id took it over), the relay ends the stream as
interrupted at its next chunk, which is charged but not relayed. The tokens produced so far then
settle against a hold that still stands for half a TTL, time for the settle's repeats to reach a
budget that comes back: what is charged is exact, and no token is produced unheld. A budget that
stays down for longer loses that settle, as it would any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from nats.errors import Error as NatsError

from shared import codec, names
from shared.bus import Bus
from shared.contracts import ExtendReply, ExtendRequest
from switchboard_sdk import errors

log = logging.getLogger("switchboard.gateway")
EXTENDS_PER_TTL = 4
MARGIN_PER_TTL = 2  # the stream ends once less than ttl/2 is known held


class HoldKeeper:
    def __init__(self, bus: Bus, env: str, ask: ExtendRequest, ttl_s: float, timeout_s: float, since: float):
        """`since`: the monotonic time the reservation was asked for (its TTL runs from then, or later)."""
        self.bus = bus
        self.subject = names.budget_extend(env)
        self.ask = ask
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.held_until = since + ttl_s

    def lapsing(self) -> bool:
        """True once the hold may lapse before the stream's next chunk: the relay stops then."""
        return time.monotonic() >= self.held_until - self.ttl_s / MARGIN_PER_TTL

    @contextlib.asynccontextmanager
    async def keeping(self) -> AsyncIterator[None]:
        """Extend the hold in the background while the body (the relay) runs."""
        task = asyncio.create_task(self._keep())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / EXTENDS_PER_TTL)
            await self.extend()

    async def extend(self) -> None:
        sent = time.monotonic()
        try:
            reply = await self.bus.request(
                self.subject,
                self.ask,
                ExtendReply,
                timeout=self.timeout_s,
                unavailable=errors.BudgetUnavailable,
            )
        except (errors.SwitchboardError, NatsError, codec.DecodeError) as exc:
            self._failed(repr(exc))
            return
        if reply.error is not None:
            self._failed(reply.error.message)
        elif reply.extended:
            self.held_until = sent + self.ttl_s
        else:  # expired, settled or taken over: nothing of it is held any more
            self.held_until = sent
            self._failed("the reservation is no longer held by this try")

    def _failed(self, why: str) -> None:
        log.warning(
            "budget reservation not extended",
            extra={
                "invocation_id": self.ask.invocation_id,
                "workflow": self.ask.workflow,
                "held_for_s": round(self.held_until - time.monotonic(), 3),
                "error": why,
            },
        )

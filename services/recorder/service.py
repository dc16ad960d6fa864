"""recorder: the one writer of the audit log. Consumes the event stream into PostgreSQL in
batches, idempotently (a redelivered event is a no-op), acknowledging only what is committed;
serves trace reconstruction and the stats/listing queries of sbctl; keeps the day partitions
of its own environment (created ahead, dropped past retention)."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry.trace import SpanKind
from pydantic import Field

from services.recorder import retention, store
from shared import codec, errors, names
from shared.contracts import (
    Event,
    EventCountReply,
    EventCountRequest,
    InvocationEvent,
    TraceReply,
    TraceRequest,
)
from shared.service import Service
from shared.settings import Settings
from shared.telemetry import metrics, tracing

log = logging.getLogger("switchboard.recorder")
_tracer = tracing.tracer("switchboard.recorder")


class RecorderSettings(Settings):
    http_port: int = 9104
    batch_size: int = 500
    event_retention_days: int = Field(default=90, ge=1)  # the event trail of an invocation
    invocation_retention_days: int = Field(default=180, ge=1)  # the invocation rows
    partitions_ahead_days: int = Field(default=2, ge=0)
    retention_interval_s: float = Field(default=3600.0, gt=0)


class RecorderService(Service):
    name = "recorder"
    settings_class = RecorderSettings
    uses_database = True
    uses_config = False
    settings: RecorderSettings

    async def setup(self, stack: AsyncExitStack) -> None:
        env = self.settings.env
        self._sub = await self.bus.js.pull_subscribe(
            names.events_wildcard(env),
            durable=names.RECORDER_DURABLE,
            stream=names.events_stream(env),
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=30,
                max_ack_pending=20_000,
            ),
        )
        self._stopping = asyncio.Event()
        await self._retain_logged()  # today's partitions exist before the first write
        self.recorded = 0
        tasks = [asyncio.create_task(self._consume()), asyncio.create_task(self._retain_forever())]
        stack.push_async_callback(self._stop, tasks)
        await self.bus.serve(
            names.recorder_trace(env), names.RECORDER_QUEUE, TraceRequest, self.trace, self._error_reply
        )
        await self.bus.serve(
            names.recorder_count(env),
            names.RECORDER_QUEUE,
            EventCountRequest,
            self.count,
            lambda exc, _: EventCountReply(kind="", error=errors.to_wire(exc)),
        )

    async def _stop(self, tasks: list[asyncio.Task]) -> None:
        self._stopping.set()
        _, pending = await asyncio.wait(tasks, timeout=self.settings.drain_timeout_s)
        for task in pending:
            task.cancel()
        await self._sub.unsubscribe()

    async def _consume(self) -> None:
        backoff = 0.2
        while not self._stopping.is_set():
            try:
                msgs = await self._sub.fetch(self.settings.batch_size, timeout=1.0)
            except NatsTimeout:
                continue
            except Exception as exc:
                log.warning("fetch failed", extra={"error": repr(exc)})
                await asyncio.sleep(backoff)
                continue
            fetched_ns = time.time_ns()
            events, good = [], []
            for msg in msgs:
                try:
                    event = codec.decode_event(msg.data)
                except codec.DecodeError as exc:
                    log.error("unreadable event dropped", extra={"subject": msg.subject, "error": str(exc)})
                    await msg.term()
                    continue
                events.append(event)
                good.append(msg)
            if not events:
                continue
            try:
                await store.write_batch(self.db, events)
            except Exception as exc:  # PostgreSQL down: leave unacked, JetStream redelivers
                log.error("audit write failed; will retry", extra={"error": repr(exc), "batch": len(events)})
                for msg in good:
                    await msg.nak(delay=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            for msg in good:
                await msg.ack()
            _trace_recorded(good, events, fetched_ns)
            self.recorded += len(events)
            for e in events:
                metrics.EVENTS_RECORDED.labels(e.kind.value).inc()

    async def _retain_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self.settings.retention_interval_s)
            except TimeoutError:
                pass
            await self._retain_logged()

    async def _retain_logged(self) -> None:
        try:
            await self.retain()
        except Exception as exc:
            log.warning("retention pass failed", extra={"error": repr(exc)})

    async def retain(self) -> retention.Pass:
        """Create the coming days' partitions and drop this environment's expired ones."""
        s = self.settings
        policy = retention.Retention(
            s.event_retention_days, s.invocation_retention_days, s.partitions_ahead_days
        )
        done = await retention.run(self.db, s.env, policy)
        if done.dropped:
            log.info("dropped audit partitions past retention", extra={"partitions": done.dropped})
        return done

    async def trace(self, req: TraceRequest, _: Msg) -> TraceReply:
        try:
            invocation, events = await store.read_trace(self.db, self.settings.env, req.invocation_id)
        except Exception as exc:
            raise errors.Unavailable(f"audit log unavailable: {type(exc).__name__}") from exc
        return TraceReply(
            invocation_id=req.invocation_id,
            found=invocation is not None or bool(events),
            invocation=codec.decode(invocation, InvocationEvent) if invocation else None,
            events=[codec.decode_event(body) for body in events],
        )

    async def count(self, req: EventCountRequest, _: Msg) -> EventCountReply:
        """How many events of a kind the audit log holds for these invocations (drills read it)."""
        try:
            count, invocations = await store.count_events(
                self.db, self.settings.env, req.kind, req.invocation_ids
            )
        except Exception as exc:
            raise errors.Unavailable(f"audit log unavailable: {type(exc).__name__}") from exc
        return EventCountReply(kind=req.kind, count=count, invocations=invocations)

    def health_details(self) -> dict:
        return {"recorded": getattr(self, "recorded", 0)}

    def _error_reply(self, exc: errors.SwitchboardError, _: bytes) -> TraceReply:
        return TraceReply(invocation_id="", found=False, error=errors.to_wire(exc))


def _trace_recorded(msgs: list[Msg], events: list[Event], fetched_ns: int) -> None:
    """A span per recorded event, from fetch to commit, as a child of the span that emitted it:
    an invocation's trace ends where its audit trail is written. Unsampled parents cost nothing."""
    for msg, event in zip(msgs, events, strict=True):
        parent = tracing.extract(msg.headers)
        if not tracing.sampled(parent):
            continue
        _tracer.start_span(
            f"record {event.kind.value}",
            context=parent,
            kind=SpanKind.CONSUMER,
            start_time=fetched_ns,
            attributes={"switchboard.event_id": event.event_id, "switchboard.kind": event.kind.value},
        ).end()

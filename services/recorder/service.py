"""recorder: the one writer of the audit log. Consumes the event stream into PostgreSQL in
batches, idempotently (a redelivered event is a no-op), acknowledging only what is committed;
serves trace reconstruction and the stats/listing queries of sbctl; keeps the day partitions
of its own environment (created ahead, dropped past retention)."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry.trace import SpanKind
from pydantic import Field

from services.recorder import deadletter, queries, retention, store
from shared import codec, names
from shared.contracts import (
    AuditLag,
    DeadLettersReply,
    DeadLettersRequest,
    Event,
    EventCountReply,
    EventCountRequest,
    InvocationEvent,
    InvocationsReply,
    InvocationsRequest,
    StatsReply,
    StatsRequest,
    TraceReply,
    TraceRequest,
)
from shared.service import Service
from shared.settings import Settings
from shared.telemetry import metrics, tracing
from switchboard_sdk import errors

log = logging.getLogger("switchboard.recorder")
_tracer = tracing.tracer("switchboard.recorder")


class RecorderSettings(Settings):
    http_port: int = 9104
    batch_size: int = 500
    # After a batch smaller than batch_size, wait this long before fetching again, so that a
    # stream that is not busy is still written in batches (one pull, one transaction, one commit
    # for many events, not for each) at the cost of an audit log this much later.
    batch_wait_s: float = Field(default=0.05, ge=0)
    event_retention_days: int = Field(default=90, ge=1)  # the event trail of an invocation
    invocation_retention_days: int = Field(default=180, ge=1)  # the invocation rows
    partitions_ahead_days: int = Field(default=2, ge=0)
    retention_interval_s: float = Field(default=3600.0, gt=0)
    lag_interval_s: float = Field(default=5.0, gt=0)  # how often the audit lag gauges are refreshed


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
        self._partitions = store.Partitions()
        await self._retain_logged()  # today's partitions exist before the first write
        self.recorded = 0  # events written by this process: its /metrics events_recorded_total
        self.dead_lettered = 0
        self.lag: tuple[AuditLag, float] | None = None  # the last measurement, and when
        tasks = [
            asyncio.create_task(self._consume()),
            asyncio.create_task(self._retain_forever()),
            asyncio.create_task(self._watch_lag_forever()),
        ]
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
        await self.bus.serve(
            names.recorder_stats(env),
            names.RECORDER_QUEUE,
            StatsRequest,
            self.stats,
            lambda exc, _: StatsReply(error=errors.to_wire(exc)),
        )
        await self.bus.serve(
            names.recorder_invocations(env),
            names.RECORDER_QUEUE,
            InvocationsRequest,
            self.invocations,
            lambda exc, _: InvocationsReply(error=errors.to_wire(exc)),
        )
        await self.bus.serve(
            names.recorder_dead_letters(env),
            names.RECORDER_QUEUE,
            DeadLettersRequest,
            self.dead_letters,
            lambda exc, _: DeadLettersReply(error=errors.to_wire(exc)),
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
            batch, unreadable = [], []
            for msg in msgs:
                try:
                    event = codec.decode_event(msg.data)
                except codec.DecodeError as exc:
                    unreadable.append((msg, f"unreadable: {exc}"))
                    continue
                batch.append((event, msg))
            written = await self._write(batch, backoff, fetched_ns) if batch else True
            for i, (msg, reason) in enumerate(unreadable):
                if not await self._dead_letter(msg, None, reason, "unreadable"):
                    await self._retry_later([m for m, _ in unreadable[i:]], backoff)
                    written = False
                    break
            if written:
                backoff = 0.2
                if len(msgs) < self.settings.batch_size:
                    await self._pause(self.settings.batch_wait_s)
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but not past a stop."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _write(self, batch: list[tuple[Event, Msg]], backoff: float, fetched_ns: int) -> bool:
        """Write a batch in one transaction; if PostgreSQL refuses it, one event at a time,
        dead-lettering each event it refuses. False when PostgreSQL is unreachable (the events
        not yet written are left for redelivery)."""
        try:
            await store.write_batch(self.db, [event for event, _ in batch], self._partitions)
        except Exception as exc:
            if deadletter.unavailable(exc):
                log.error("audit write failed; will retry", extra={"error": repr(exc), "batch": len(batch)})
                await self._retry_later([msg for _, msg in batch], backoff)
                return False
            for i, (event, msg) in enumerate(batch):
                try:
                    await store.write_batch(self.db, [event], self._partitions)
                except Exception as one:
                    if deadletter.unavailable(one) or not await self._dead_letter(
                        msg, event, f"{type(one).__name__}: {one}", "rejected"
                    ):
                        await self._retry_later([m for _, m in batch[i:]], backoff)
                        return False
                    continue
                await self._done([(event, msg)], fetched_ns)
            return True
        await self._done(batch, fetched_ns)
        return True

    async def _done(self, batch: list[tuple[Event, Msg]], fetched_ns: int) -> None:
        for event, msg in batch:
            await msg.ack()
            metrics.EVENTS_RECORDED.labels(event.kind.value).inc()
        _trace_recorded([msg for _, msg in batch], [event for event, _ in batch], fetched_ns)
        self.recorded += len(batch)

    async def _dead_letter(self, msg: Msg, event: Event | None, reason: str, why: str) -> bool:
        """Keep an event the audit log cannot hold and acknowledge it; False if PostgreSQL is down."""
        try:
            await deadletter.keep(self.db, self.settings.env, msg, event, reason)
        except Exception as exc:
            log.error("dead letter not kept; will retry", extra={"error": repr(exc)})
            return False
        await msg.ack()
        metrics.EVENTS_DEAD_LETTERED.labels(why).inc()
        self.dead_lettered += 1
        log.error("event dead-lettered", extra={"subject": msg.subject, "reason": reason[:500]})
        return True

    @staticmethod
    async def _retry_later(msgs: list[Msg], delay: float) -> None:
        for msg in msgs:
            await msg.nak(delay=delay)

    async def _watch_lag_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.measure_lag()
            except Exception as exc:
                log.debug("audit lag not measured", extra={"error": repr(exc)})
            try:
                await asyncio.wait_for(self._stopping.wait(), self.settings.lag_interval_s)
            except TimeoutError:
                pass

    async def measure_lag(self) -> tuple[int, float]:
        """Export how far the audit log is behind the event stream as gauges."""
        pending, age = await audit_lag(self.bus.js, self.settings.env)
        metrics.AUDIT_PENDING.set(pending)
        metrics.AUDIT_OLDEST_UNRECORDED.set(age)
        self.lag = (AuditLag(pending_events=pending, oldest_s=round(age, 1)), time.time())
        return pending, age

    async def current_lag(self) -> AuditLag | None:
        """The lag now, for answers read from the audit log (None if JetStream cannot say)."""
        try:
            pending, age = await self.measure_lag()
        except Exception as exc:
            log.debug("audit lag not measured", extra={"error": repr(exc)})
            return None
        return AuditLag(pending_events=pending, oldest_s=round(age, 1))

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
        found = invocation is not None or bool(events)
        return TraceReply(
            invocation_id=req.invocation_id,
            found=found,
            invocation=codec.decode(invocation, InvocationEvent) if invocation else None,
            events=[codec.decode_event(body) for body in events],
            audit_lag=None if found else await self.current_lag(),
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

    async def stats(self, req: StatsRequest, _: Msg) -> StatsReply:
        """Per-workflow (and per-agent) figures over a window that ends `until_s` seconds ago,
        for `sbctl stats` and `sbctl latency`."""
        now = datetime.now(UTC)
        since = now - timedelta(seconds=req.since_s + req.until_s)
        until = now - timedelta(seconds=req.until_s) if req.until_s else None
        window = queries.Window(self.settings.env, since, until, req.workflow, req.statuses)
        try:
            workflows = await queries.stats(self.db, window)
            agents = await queries.agents(self.db, window) if req.by_agent else []
        except Exception as exc:
            raise errors.Unavailable(f"audit log unavailable: {type(exc).__name__}") from exc
        return StatsReply(
            since=since.timestamp(),
            until=until.timestamp() if until else None,
            workflows=workflows,
            agents=agents,
            audit_lag=await self.current_lag(),
        )

    async def invocations(self, req: InvocationsRequest, _: Msg) -> InvocationsReply:
        """The newest invocations matching the filters, for `sbctl invocations`."""
        since = datetime.now(UTC) - timedelta(seconds=req.since_s)
        filters = req.model_dump(include={"workflow", "status", "agent", "limit"})
        try:
            rows = await queries.invocations(self.db, self.settings.env, since, **filters)
        except Exception as exc:
            raise errors.Unavailable(f"audit log unavailable: {type(exc).__name__}") from exc
        return InvocationsReply(invocations=rows, audit_lag=await self.current_lag())

    async def dead_letters(self, req: DeadLettersRequest, _: Msg) -> DeadLettersReply:
        try:
            count, rows = await deadletter.recent(self.db, self.settings.env, req.limit)
        except Exception as exc:
            raise errors.Unavailable(f"audit log unavailable: {type(exc).__name__}") from exc
        return DeadLettersReply(count=count, dead_letters=rows)

    def health_details(self) -> dict:
        """What this process wrote (the same counts as its /metrics events_recorded_total and
        events_dead_lettered_total, both since it started) and the audit lag last measured."""
        body = {
            "events_recorded": getattr(self, "recorded", 0),
            "events_dead_lettered": getattr(self, "dead_lettered", 0),
        }
        lag = getattr(self, "lag", None)
        if lag is not None:
            measured, at = lag
            body["audit_lag"] = measured.model_dump() | {"measured_s_ago": round(time.time() - at, 1)}
        return body

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


async def audit_lag(js, env: str) -> tuple[int, float]:
    """(events in JetStream the recorders have not written yet, age in seconds of the oldest)."""
    stream = names.events_stream(env)
    info = await js.consumer_info(stream, names.RECORDER_DURABLE)
    pending = info.num_pending + info.num_ack_pending
    if not pending:
        return 0, 0.0
    oldest = await js.get_msg(stream, seq=info.ack_floor.stream_seq + 1, next=True)
    return pending, max(0.0, time.time() - oldest.time.timestamp())

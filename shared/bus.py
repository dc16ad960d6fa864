"""NATS for every service: request/reply with trace context and typed errors, queue-group
handlers that never crash on bad input, and durable JetStream events.

A handler receives a validated pydantic model and returns one; the bus decodes, checks the
size, opens a span continuing the caller's trace, runs the handler in its own task (so one
slow call never blocks the subscription), and turns any exception into an error reply with
a machine code. `drain()` stops taking work and waits for what is in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from shared import codec, names, service_api
from shared.contracts import Event
from shared.settings import Settings
from shared.spool import SPOOL_MAX_BYTES, EventSpool, Spooled
from shared.telemetry import metrics, tracing
from switchboard_sdk import errors, nats_auth

log = logging.getLogger("switchboard.bus")
M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)
E = TypeVar("E", bound=Event)

EVENTS_MAX_AGE_S = 7 * 24 * 3600  # the stream is a buffer; PostgreSQL keeps the 90 days
PUBLISH_TIMEOUT_S = 2.0


class Bus:
    """One NATS connection per process, with JetStream, owned by the service's exit stack."""

    def __init__(
        self,
        nc: NATS,
        *,
        env: str,
        service: str,
        max_payload: int,
        max_inflight: int,
        spool_max_bytes: int = SPOOL_MAX_BYTES,
    ):
        self.nc = nc
        self.js = nc.jetstream()
        self.env = env
        self.service = service
        self.max_payload = max_payload
        self._inflight: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(max_inflight)
        self._subs: list = []
        self._tracer = tracing.tracer(f"switchboard.{service}")
        self.endpoints: list[service_api.Endpoint] = []
        self._registration: service_api.Registration | None = None
        self.spool = EventSpool(self.js, max_bytes=spool_max_bytes, publish_timeout_s=PUBLISH_TIMEOUT_S)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        env: str,
        service: str,
        max_payload: int = 1_048_576,
        max_inflight: int = 512,
        connect_timeout: float = 2.0,
        first_connect_s: float = 10.0,
        settings: Settings | None = None,
    ) -> Bus:
        """Connect as the NATS user of `service` (sbctl: the operator), with the credentials and
        TLS of `settings` (by default read from the environment)."""

        async def on_error(exc: Exception) -> None:
            log.warning("nats error", extra={"error": repr(exc)})

        async def on_disconnect() -> None:
            if not (nc.is_closed or nc.is_draining):
                log.warning("nats disconnected")

        async def on_reconnect() -> None:
            log.info("nats reconnected")

        # Reconnect forever once connected, but give up on the first connection after a while:
        # with unlimited attempts nats-py would otherwise retry an unreachable server forever.
        try:
            nc = await asyncio.wait_for(
                nats.connect(
                    url,
                    name=f"switchboard-{service}-{env}",
                    connect_timeout=connect_timeout,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    drain_timeout=5,
                    **nats_auth.connect_options(settings or Settings(), _role_user(service)),
                ),
                timeout=first_connect_s,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise errors.Unavailable(f"cannot reach NATS at {url} within {first_connect_s:g}s") from exc
        return cls(nc, env=env, service=service, max_payload=max_payload, max_inflight=max_inflight)

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    # --- request/reply ----------------------------------------------------------------

    async def request(
        self,
        subject: str,
        body: BaseModel,
        reply_model: type[R],
        *,
        timeout: float,
        unavailable: type[errors.Unavailable] = errors.Unavailable,
    ) -> R:
        """Ask a queue group and decode its answer; no responder or no answer is `unavailable`."""
        headers = tracing.inject({})
        try:
            msg = await self.nc.request(subject, codec.encode(body), timeout=timeout, headers=headers)
        except NoRespondersError as exc:
            raise unavailable(f"nothing is serving {subject}") from exc
        except NatsTimeout as exc:
            raise unavailable(f"no answer on {subject} within {timeout:g}s") from exc
        return codec.decode(msg.data, reply_model)

    async def serve(
        self,
        subject: str,
        queue: str,
        request_model: type[M],
        handler: Callable[[M, Msg], Awaitable[BaseModel | None]],
        on_error: Callable[[errors.SwitchboardError, bytes], BaseModel],
    ) -> None:
        """Answer `subject` in `queue` with `handler`; `on_error` shapes error replies. The
        subscription is an endpoint of the service API (`register`)."""
        endpoint = service_api.Endpoint(service_api.endpoint_name(subject), subject, queue)
        self.endpoints.append(endpoint)

        async def run(msg: Msg) -> None:
            try:
                await self._handle(msg, endpoint, request_model, handler, on_error)
            finally:
                self._slots.release()

        async def dispatch(msg: Msg) -> None:
            await self._slots.acquire()  # backpressure: the subscription buffers meanwhile
            task = asyncio.create_task(run(msg))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

        self._subs.append(await self.nc.subscribe(subject, queue=queue, cb=dispatch))
        # The server must have taken the subscription before the service says it is ready:
        # otherwise a request sent right after start-up can meet "no responders".
        await self.nc.flush()

    async def _handle(self, msg, endpoint, request_model, handler, on_error) -> None:
        started = time.perf_counter_ns()
        error_code = None
        ctx = tracing.extract(msg.headers)
        with self._tracer.start_as_current_span(
            f"{self.service} {msg.subject.split('.', 2)[-1]}", context=ctx, kind=SpanKind.SERVER
        ) as span:
            try:
                if len(msg.data) > self.max_payload:
                    raise errors.PayloadTooLarge(
                        f"payload of {len(msg.data)} bytes is over the limit of {self.max_payload}"
                    )
                try:
                    request = codec.decode(msg.data, request_model)
                except codec.DecodeError as exc:
                    raise errors.InvalidRequest(str(exc), details=exc.details) from exc
                reply = await handler(request, msg)
            except errors.SwitchboardError as exc:
                if isinstance(exc, errors.InvalidRequest):
                    metrics.BAD_REQUESTS.labels(self.service, exc.code).inc()
                span.set_attribute("switchboard.error_code", exc.code)
                error_code = exc.code
                reply = on_error(exc, msg.data)
            except Exception as exc:
                metrics.HANDLER_ERRORS.labels(self.service).inc()
                span.record_exception(exc)
                span.set_status(trace.Status(trace.StatusCode.ERROR))
                log.exception("handler failed", extra={"subject": msg.subject})
                internal = errors.SwitchboardError(f"internal error: {type(exc).__name__}")
                error_code = internal.code
                reply = on_error(internal, msg.data)
            if reply is not None:
                await self.reply(msg, reply)
        endpoint.record(time.perf_counter_ns() - started, error_code)

    async def register(self) -> None:
        """Answer the NATS service API ($SRV.PING/INFO/STATS) for this process's endpoints."""
        self._registration = await service_api.register(
            self.nc, service=self.service, env=self.env, endpoints=self.endpoints
        )

    @property
    def service_id(self) -> str | None:
        """This replica's id in the service API (None until registered)."""
        return self._registration.id if self._registration else None

    async def reply(self, msg: Msg, body: BaseModel) -> None:
        await self.reply_raw(msg, codec.encode(body))

    async def reply_raw(self, msg: Msg, data: bytes) -> None:
        if not msg.reply:
            return
        try:
            await msg.respond(data)
        except Exception:  # the asker may be gone; the work is done either way
            log.warning("reply failed", extra={"subject": msg.subject}, exc_info=True)

    async def publish(self, subject: str, body: BaseModel | dict) -> None:
        """Fire-and-forget core publish, with trace context."""
        await self.nc.publish(subject, codec.encode(body), headers=tracing.inject({}))

    # --- events -----------------------------------------------------------------------

    def stamp(self, event: E) -> E:
        """The event with this service's envelope: a new id, the time, env, service, and the
        current trace unless the emitter named one."""
        return event.model_copy(
            update={
                "event_id": uuid.uuid4().hex,
                "ts": time.time(),
                "env": self.env,
                "service": self.service,
                "trace_id": event.trace_id or tracing.trace_id_hex(),
            }
        )

    async def emit(self, event: E) -> E:
        """Publish an event durably (JetStream ack, de-duplicated by event id), or spool it when
        JetStream does not take it; returns it as sent. The current span gets it as a span event."""
        stamped = self.stamp(event)
        tracing.add_span_event(stamped)
        await self._publish_event(stamped)
        return stamped

    def emit_later(self, event: Event) -> None:
        """Emit in the background (stamped, and added to the current span, now); `drain()`
        waits for it."""
        stamped = self.stamp(event)
        tracing.add_span_event(stamped)
        self.spawn(self._publish_event(stamped))

    async def _publish_event(self, event: Event) -> None:
        kind = event.kind.value
        item = Spooled(
            subject=names.event(self.env, kind),
            data=codec.encode(event),
            headers=tracing.inject({"Nats-Msg-Id": event.event_id}),
            kind=kind,
            event_id=event.event_id,
        )
        if self.spool:  # JetStream is not taking events: queue behind those that wait
            self.spool.add(item)
            return
        try:
            await self.js.publish(item.subject, item.data, headers=item.headers, timeout=PUBLISH_TIMEOUT_S)
        except Exception as exc:
            log.warning("event spooled", extra={"kind": kind, "event_id": item.event_id, "error": repr(exc)})
            self.spool.add(item)
            return
        metrics.EVENTS_PUBLISHED.labels(kind).inc()

    def spawn(self, coro: Awaitable) -> None:
        task = asyncio.ensure_future(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def ensure_events_stream(self) -> None:
        """Create the environment's event stream if it does not exist (idempotent)."""
        config = StreamConfig(
            name=names.events_stream(self.env),
            subjects=[names.events_wildcard(self.env)],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=EVENTS_MAX_AGE_S,
            duplicate_window=120,
        )
        try:
            await self.js.add_stream(config)
        except BadRequestError as exc:  # exists with another config: keep it, say so
            log.warning("events stream exists with other settings", extra={"error": str(exc)})

    # --- shutdown ---------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Stop taking work, finish what is in flight (replies, events), give spooled events the
        rest of `timeout` to reach JetStream, then close."""
        deadline = time.monotonic() + timeout
        await self.stop_serving(timeout)
        await self.spool.wait_empty(max(0.0, deadline - time.monotonic()))
        await self.close()

    async def stop_serving(self, timeout: float) -> None:
        """Unsubscribe every handler after it has taken what was buffered; await in-flight work."""
        deadline = time.monotonic() + timeout
        if self._registration is not None:  # discovery stops listing a replica that is leaving
            await self._registration.stop()
        for sub in self._subs:
            try:
                await sub.drain()  # hands buffered messages to the handler, then unsubscribes
            except Exception:
                log.warning("subscription drain failed", exc_info=True)
        self._subs.clear()
        while self._inflight and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(set(self._inflight), timeout=left)

    async def close(self) -> None:
        await self.spool.close()
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:
                await self.nc.close()


def _role_user(service: str) -> str:
    return nats_auth.OPERATOR if service == "sbctl" else service

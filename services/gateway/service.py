"""gateway: the data plane. Takes invocation requests, claims their id (idempotency), asks the
budget and then the router, calls providers down the fallback chain, stores and settles the
result, replies, and records what happened."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack

import orjson
from nats.aio.msg import Msg

from services.gateway import access_log, identity
from services.gateway.admission import admit
from services.gateway.idempotency import Idempotency, Replay
from services.gateway.invocation import Invocation
from services.gateway.outcomes import OutcomeReporter
from services.gateway.settling import Settler
from shared import codec, errors, names
from shared.contracts import InvokeRequest, InvokeResult, Status
from shared.providers import ProviderPool
from shared.service import Service
from shared.settings import Settings
from shared.switches import SwitchWatch
from shared.telemetry import tracing

log = logging.getLogger("switchboard.gateway")


class GatewaySettings(Settings):
    http_port: int = 9101
    control_timeout_s: float = 1.0  # how long router and budget may take to answer


class GatewayService(Service):
    name = "gateway"
    settings_class = GatewaySettings
    uses_redis = True
    settings: GatewaySettings

    async def setup(self, stack: AsyncExitStack) -> None:
        self.providers = ProviderPool()
        stack.push_async_callback(self.providers.aclose)
        if self.config.loaded:
            self.providers.update(self.config.active.policy)
        self.config.on_change(lambda active: self.providers.update(active.policy))
        self.switches = SwitchWatch(self.bus.js, self.settings.env)
        await self.switches.start()
        stack.push_async_callback(self.switches.stop)
        self.idempotency = Idempotency(self.redis, self.settings.env)
        self.settler = Settler(self.bus, self.settings.env)
        await self.settler.start()
        stack.push_async_callback(self.settler.close, self.settings.drain_timeout_s)
        self.outcomes = OutcomeReporter(self.bus, self.settings.env)
        self.outcomes.successes.start()
        stack.push_async_callback(self.outcomes.successes.close)
        env = self.settings.env
        for subject in (names.invoke_wildcard(env), names.agent_invoke_wildcard(env)):
            await self.bus.serve(subject, names.GATEWAY_QUEUE, InvokeRequest, self.invoke, self._error_reply)

    async def invoke(self, req: InvokeRequest, msg: Msg) -> None:
        started = time.perf_counter()
        if req.workflow != msg.subject.rsplit(".", 1)[-1]:
            raise errors.InvalidRequest(
                f"workflow {req.workflow!r} does not match the subject {msg.subject!r}"
            )
        active = self.config.active
        workflow = active.policy.workflows.get(req.workflow)
        if workflow is None:
            raise errors.UnknownWorkflow(f"no workflow named {req.workflow!r} in policy {active.version}")
        in_flight_ttl = sum(t.timeout_ms for t in workflow.tiers) / 1000 + 30
        req, refusal = identity.admit(req, msg.subject, active.policy)
        try:
            digest = await self.idempotency.begin(req, in_flight_ttl)
        except Replay as replay:  # a retry of a finished invocation: its first reply, nothing else
            await self.bus.reply_raw(msg, replay.stored)
            access_log.replay(
                req,
                codec.decode(replay.stored, InvokeResult),
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
                trace_id=tracing.trace_id_hex(),
            )
            return
        # A duplicate in flight or a conflicting request raises here: it reserved nothing and
        # took no tier, and the invocation that owns the id is left alone.
        run = Invocation(self, req, active, workflow, started)
        if refusal is not None:
            # Refused by identity or agent policy, after the id was claimed: a refusal is never
            # recorded under the id of another caller's invocation.
            await self.idempotency.forget(req.invocation_id)
            result = run.failed(refusal)
            run.record(result)
            await asyncio.sleep(0)  # the events enter the connection's buffer ahead of the reply
            await self.bus.reply(msg, result)
            return
        try:
            admit(self.switches.current, req)
        except errors.Paused as exc:  # an operator's stop switch: refused once the id is claimed, too
            await self.idempotency.forget(req.invocation_id)
            result = run.rejected(exc)
            run.record(result)
            await asyncio.sleep(0)  # the events enter the connection's buffer ahead of the reply
            await self.bus.reply(msg, result)
            return
        try:
            result = await run.execute()
        except errors.SwitchboardError as exc:
            # Refused by a dependency (the budget unavailable and the workflow fail_closed, a router
            # error): answered, logged and recorded like any invocation, and retryable by its id.
            await run.settle()
            await self.idempotency.forget(req.invocation_id)
            result = run.failed(exc)
            run.record(result)
            await asyncio.sleep(0)  # the events enter the connection's buffer ahead of the reply
            await self.bus.reply(msg, result)
            return
        except BaseException:
            await run.settle()  # nothing was used: release the reservation now, not at its expiry
            await self.idempotency.forget(req.invocation_id)
            raise
        # Settled, recorded and stored before it is sent. The settle and the event publishes
        # enter the connection's buffer first and are flushed while the reply is being stored,
        # so a gateway killed once the reply is stored (whether or not it went out) has sent
        # its settle and audit trail, and a retry is answered from the stored reply.
        data = codec.encode(result)
        await run.settle(result.usage, result.model)
        run.record(result)
        await asyncio.sleep(0)  # the event publishes enter the connection's buffer
        await self.idempotency.finish(req.invocation_id, digest, data)
        await self.bus.reply_raw(msg, data)

    def _error_reply(self, exc: errors.SwitchboardError, raw: bytes) -> InvokeResult:
        """The answer to a request refused before it ran, logged like every answer."""
        result = InvokeResult(
            invocation_id=_invocation_id(raw),
            status=Status.ERROR,
            error=errors.to_wire(exc),
            config_version=self.config_version,
        )
        access_log.refused(raw, result, trace_id=tracing.trace_id_hex())
        return result


def _invocation_id(raw: bytes) -> str:
    """Best effort: echo the caller's id even when the rest of the request was invalid."""
    try:
        value = orjson.loads(raw).get("invocation_id")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""

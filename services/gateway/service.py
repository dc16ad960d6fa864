"""gateway: the data plane. Takes invocation requests, claims their id (idempotency), asks the
budget, holds gated ones for review, plans each tier from the provider state the router keeps in
Redis, calls providers down the fallback chain, stores and settles the result, replies, and
records what happened; resumes a held invocation once its review is decided."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack

import orjson
from nats.aio.msg import Msg
from pydantic import Field

from services.gateway import access_log, identity, probes
from services.gateway.gates import Gates
from services.gateway.idempotency import Idempotency, fingerprint
from services.gateway.invocation import Invocation, max_in_flight_s
from services.gateway.leases import Leases
from services.gateway.outcomes import OutcomeReporter
from services.gateway.planning import Planner
from services.gateway.resumes import Resumes
from services.gateway.settling import Settler
from services.gateway.streaming import StreamRelay
from shared import codec, names
from shared.contracts import (
    InvokeRequest,
    InvokeResult,
    ProbeReply,
    ProbeRequest,
    ResumeReply,
    ResumeRequest,
    ReviewStage,
    Status,
)
from shared.policy import WorkflowSpec
from shared.providers import ProviderPool
from shared.service import Service
from shared.settings import Settings
from shared.switches import SwitchWatch
from shared.telemetry import tracing
from switchboard_sdk import errors

log = logging.getLogger("switchboard.gateway")


class GatewaySettings(Settings):
    http_port: int = 9101
    control_timeout_s: float = 1.0  # how long the budget may take to answer
    review_timeout_s: float = 5.0  # how long the hitl service may take to store a review
    resume_ttl_s: float = 7 * 86400  # how long a decided review's result is kept against a re-ask
    # How long an invocation id (or a review being acted on) stays in flight after the gateway
    # holding it dies; refreshed while it lives (services/gateway/leases.py).
    claim_ttl_s: float = Field(default=5.0, gt=0, le=60)


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
        self.leases = Leases(self.redis, self.settings.claim_ttl_s)
        self.leases.start()
        stack.push_async_callback(self.leases.stop)
        self.idempotency = Idempotency(self.redis, self.settings.env, self.leases)
        self.settler = Settler(self.bus, self.settings.env)
        await self.settler.start()
        stack.push_async_callback(self.settler.close, self.settings.drain_timeout_s)
        self.resumes = Resumes(self.redis, self.settings.env, self.leases)
        self._gates: tuple[object, Gates] | None = None
        self.planner = Planner(self.redis, self.settings.env, self.bus)
        self.outcomes = OutcomeReporter(self.bus, self.settings.env)
        self.outcomes.successes.start()
        stack.push_async_callback(self.outcomes.successes.close)
        env = self.settings.env
        for subject in (names.invoke_wildcard(env), names.agent_invoke_wildcard(env)):
            await self.bus.serve(subject, names.GATEWAY_QUEUE, InvokeRequest, self.invoke, self._error_reply)
        await self.bus.serve(
            names.gateway_resume(self.settings.env),
            names.GATEWAY_QUEUE,
            ResumeRequest,
            self.resume,
            lambda exc, _raw: ResumeReply(error=errors.to_wire(exc)),
        )
        await self.bus.serve(
            names.gateway_probe(env),
            names.GATEWAY_QUEUE,
            ProbeRequest,
            lambda req, _msg: probes.probe(self, req),
            lambda exc, _raw: ProbeReply(error=errors.to_wire(exc)),
        )

    @property
    def gates(self) -> Gates:
        """The review rules of the active policy, compiled once per version."""
        policy = self.config.active.policy
        if self._gates is None or self._gates[0] is not policy:
            self._gates = (policy, Gates(policy))
        return self._gates[1]

    def _workflow(self, workflow: str):
        active = self.config.active
        spec = active.policy.workflows.get(workflow)
        if spec is None:
            raise errors.UnknownWorkflow(f"no workflow named {workflow!r} in policy {active.version}")
        return active, spec

    async def invoke(self, req: InvokeRequest, msg: Msg) -> None:
        started = time.perf_counter()
        if req.workflow != msg.subject.rsplit(".", 1)[-1]:
            raise errors.InvalidRequest(
                f"workflow {req.workflow!r} does not match the subject {msg.subject!r}"
            )
        active, workflow = self._workflow(req.workflow)
        relay = self._relay(req, workflow, msg, started) if req.stream else None
        req, refusal = identity.admit(req, msg.subject, active.policy)
        # An identity or agent-policy refusal comes after the id is claimed (the admit step): it
        # is never recorded under the id of another caller's invocation.
        run = Invocation(self, req, active, workflow, started, refusal=refusal, relay=relay)
        result = await run.run()
        if result is None:  # a retry of a finished invocation: its first reply, nothing else
            stored = codec.decode(run.replay, InvokeResult)
            await run.settle_replayed(stored)
            await self.bus.reply_raw(msg, run.replay)
            access_log.replay(
                req,
                stored,
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
                trace_id=tracing.trace_id_hex(),
            )
            return
        # Recorded, stored, then settled, then sent (a dependency's refusal is not stored: it is
        # retryable by its id). The event publishes enter the connection's buffer first and are
        # flushed while the reply is being stored; the settle follows the store, so a gateway
        # killed before the store leaves the reservation to the retry (never a settled call the
        # retry charges again), and one killed after it leaves a reply whose replay settles.
        try:
            data = codec.encode(result)
            run.record(result)
            await asyncio.sleep(0)  # the event publishes enter the connection's buffer
            if run.keep:
                await self.idempotency.finish(req.invocation_id, run.digest, data)
        finally:
            await run.settle_used()
        await self.bus.reply_raw(msg, data)

    def _relay(self, req: InvokeRequest, workflow: WorkflowSpec, msg: Msg, started: float) -> StreamRelay:
        """Where a streamed invocation's chunks go: the requester's own inbox. Refused (before the
        id is claimed) when the workflow does not stream, as one whose output is reviewed."""
        if not msg.reply:
            raise errors.InvalidRequest("a streamed invocation needs a reply subject for its chunks")
        if not workflow.streaming:
            post = self.gates.rules(req.workflow, ReviewStage.POST)
            why = f"post-stage review rules {post} hold its output before the agent sees it" if post else ""
            raise errors.StreamNotAllowed(
                f"workflow {req.workflow!r} does not stream (streaming: false in policy"
                f" {self.config_version}){': ' + why if why else ''}; invoke it without stream"
            )
        return StreamRelay(self.bus.nc, msg.reply, req.invocation_id, started)

    async def resume(self, req: ResumeRequest, _msg: Msg) -> ResumeReply:
        """A review was decided: run the rest of the invocation once per review, keep the final
        result for retries of the id, and answer the hitl service, which records it and only then
        publishes it on sb.<env>.result.<id> (so a caller told "pending" by the record hears it)."""
        started = time.perf_counter()
        active, workflow = self._workflow(req.request.workflow)
        stored = await self.resumes.begin(req.review_id, max_in_flight_s(workflow))
        if stored is not None:  # acted on before (the hitl service did not hear): same answer
            return ResumeReply(result=codec.decode(stored, InvokeResult))
        request = req.request
        if req.edited_messages is not None:  # a reviewer's edit is what goes to the model
            request = request.model_copy(update={"messages": req.edited_messages})
        try:
            run = Invocation(self, request, active, workflow, started, resume=req)
            result = await run.run()
        except BaseException:
            await self.resumes.forget(req.review_id)
            raise
        data = codec.encode(result)
        try:  # stored before settled, as for a new invocation
            await self.resumes.finish(req.review_id, data, self.settings.resume_ttl_s)
            # The agent's retry carries its own request, so the reply is kept under that one's print.
            await self.idempotency.finish(req.request.invocation_id, fingerprint(req.request), data)
        finally:
            await run.settle_used()
        run.record(result)
        return ResumeReply(result=result)

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

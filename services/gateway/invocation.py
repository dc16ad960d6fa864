"""One invocation's path through the gateway: plan and reserve at once, walk the tiers,
then (after the reply) settle, emit events, log one line and count it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from shared import errors, names, tokens
from shared.contracts import (
    Attempt,
    AttemptOutcome,
    InvokeRequest,
    InvokeResult,
    Plan,
    PlannedTier,
    PlanRequest,
    Reservation,
    ReserveRequest,
    SettleRequest,
    Status,
    Usage,
)
from shared.live_config import ActivePolicy
from shared.policy import WorkflowSpec
from shared.providers import ProviderCallError
from shared.providers.base import CallParams
from shared.telemetry import metrics, tracing

if TYPE_CHECKING:
    from services.gateway.service import GatewayService

log = logging.getLogger("switchboard.invocation")
_tracer = tracing.tracer("switchboard.gateway")


class Invocation:
    def __init__(
        self,
        gw: GatewayService,
        req: InvokeRequest,
        active: ActivePolicy,
        workflow: WorkflowSpec,
        started: float,
    ) -> None:
        self.gw = gw
        self.bus = gw.bus
        self.env = gw.settings.env
        self.req = req
        self.active = active
        self.workflow = workflow
        self.started = started
        self.trace_id = tracing.trace_id_hex()
        self.reservation: Reservation | None = None
        self.estimate = 0

    # --- the call ---------------------------------------------------------------------

    async def execute(self) -> InvokeResult:
        req = self.req
        self.estimate = tokens.estimate(req.messages)
        plan, reservation = await asyncio.gather(self._plan(), self._reserve())
        self.reservation = reservation
        if not reservation.allowed:
            breach = reservation.breach
            return self._result(
                Status.BUDGET_EXCEEDED,
                error=errors.to_wire(
                    errors.SwitchboardError(breach.message if breach else "budget exceeded")
                ).model_copy(
                    update={
                        "code": "budget_exceeded",
                        "details": [breach.model_dump(mode="json")] if breach else None,
                    }
                ),
            )
        params = CallParams(
            max_tokens=reservation.max_tokens or req.max_tokens or 1,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stop,
        )
        attempts = [
            Attempt(
                tier=s.tier,
                provider=s.provider,
                model=s.model,
                outcome=AttemptOutcome.SKIPPED,
                reason=s.reason,
            )
            for s in plan.skipped
        ]
        failure: ProviderCallError | None = None
        for tier in plan.tiers:
            attempt, completion, failure = await self._try(tier, params)
            attempts.append(attempt)
            if completion is not None:
                attempts.sort(key=lambda a: a.tier)
                status = Status.SUCCESS if attempt.tier == 0 else Status.FALLBACK
                return self._result(
                    status,
                    attempts=attempts,
                    provider=tier.provider,
                    model=tier.model,
                    output=completion.output,
                    finish_reason=completion.finish_reason,
                    usage=Usage(
                        prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens
                    ),
                )
            if not failure.fallback:
                break
        attempts.sort(key=lambda a: a.tier)
        if failure is not None and not failure.fallback:
            error = errors.ProviderError(failure.message)
        elif not plan.tiers:
            error = errors.NoRoute(f"no tier of {req.workflow!r} can be tried now")
        else:
            error = errors.AllTiersFailed(f"every tier of {req.workflow!r} failed")
        return self._result(Status.ERROR, attempts=attempts, error=errors.to_wire(error))

    async def _try(self, tier: PlannedTier, params: CallParams):
        adapter = self.gw.providers.get(tier.provider)
        if adapter is None:
            return (
                Attempt(
                    tier=tier.tier,
                    provider=tier.provider,
                    model=tier.model,
                    outcome=AttemptOutcome.SKIPPED,
                    reason="provider not in this gateway's policy",
                ),
                None,
                ProviderCallError(AttemptOutcome.SKIPPED, "provider not configured"),
            )
        t0 = time.perf_counter()
        with _tracer.start_as_current_span(
            f"provider {tier.provider}",
            kind=SpanKind.CLIENT,
            attributes={
                "switchboard.tier": tier.tier,
                "switchboard.provider": tier.provider,
                "switchboard.model": tier.model,
            },
        ) as span:
            try:
                completion = await adapter.complete(
                    tier.model, self.req.messages, params, tier.timeout_ms / 1000
                )
            except ProviderCallError as exc:
                latency = (time.perf_counter() - t0) * 1000
                span.set_status(StatusCode.ERROR, exc.outcome.value)
                span.set_attribute("switchboard.outcome", exc.outcome.value)
                self._count_attempt(tier, exc.outcome, latency)
                return (
                    Attempt(
                        tier=tier.tier,
                        provider=tier.provider,
                        model=tier.model,
                        outcome=exc.outcome,
                        latency_ms=round(latency, 3),
                        status_code=exc.status_code,
                        reason=exc.message,
                    ),
                    None,
                    exc,
                )
        latency = (time.perf_counter() - t0) * 1000
        self._count_attempt(tier, AttemptOutcome.OK, latency)
        return (
            Attempt(
                tier=tier.tier,
                provider=tier.provider,
                model=tier.model,
                outcome=AttemptOutcome.OK,
                latency_ms=round(latency, 3),
                status_code=200,
            ),
            completion,
            None,
        )

    def _count_attempt(self, tier: PlannedTier, outcome: AttemptOutcome, latency_ms: float) -> None:
        metrics.PROVIDER_ATTEMPTS.labels(tier.provider, tier.model, outcome.value).inc()
        metrics.PROVIDER_LATENCY.labels(tier.provider, tier.model).observe(latency_ms / 1000)

    # --- control services -------------------------------------------------------------

    async def _plan(self) -> Plan:
        """The router's plan; if the router is down, the policy's tiers in order."""
        req = self.req
        try:
            plan = await self.bus.request(
                names.router_plan(self.env),
                PlanRequest(invocation_id=req.invocation_id, workflow=req.workflow, metadata=req.metadata),
                Plan,
                timeout=self.gw.settings.control_timeout_s,
                unavailable=errors.RouterUnavailable,
            )
        except errors.RouterUnavailable as exc:
            log.warning(
                "router unavailable; planning from local policy",
                extra={"invocation_id": req.invocation_id, "error": str(exc)},
            )
            return self._static_plan()
        if plan.error is not None:
            if plan.error.code == errors.UnknownWorkflow.code:
                return self._static_plan()  # the router runs another policy version than ours
            raise errors.from_wire(plan.error)
        return plan

    def _static_plan(self) -> Plan:
        return Plan(
            workflow=self.req.workflow,
            config_version=self.active.version,
            tiers=[
                PlannedTier(
                    tier=i,
                    provider=t.provider,
                    model=t.model,
                    timeout_ms=t.timeout_ms,
                    slo_p99_ms=t.slo_p99_ms,
                )
                for i, t in enumerate(self.workflow.tiers)
            ],
        )

    async def _reserve(self) -> Reservation:
        """The budget's decision; when it cannot be had, the workflow's `on_unavailable` mode."""
        req = self.req
        try:
            reservation = await self.bus.request(
                names.budget_reserve(self.env),
                ReserveRequest(
                    invocation_id=req.invocation_id,
                    workflow=req.workflow,
                    session_id=req.session_id,
                    estimated_prompt_tokens=self.estimate,
                    max_tokens=req.max_tokens,
                ),
                Reservation,
                timeout=self.gw.settings.control_timeout_s,
                unavailable=errors.BudgetUnavailable,
            )
        except errors.BudgetUnavailable as exc:
            return self._budget_unavailable(str(exc))
        if reservation.error is not None:
            if reservation.error.code == errors.BudgetUnavailable.code:
                return self._budget_unavailable(reservation.error.message)
            raise errors.from_wire(reservation.error)
        return reservation

    def _budget_unavailable(self, why: str) -> Reservation:
        budget = self.workflow.budget
        self.bus.emit_later(
            "budget_unavailable",
            invocation_id=self.req.invocation_id,
            workflow=self.req.workflow,
            session_id=self.req.session_id,
            mode=budget.on_unavailable,
            reason=why,
        )
        if budget.on_unavailable != "allow":
            raise errors.BudgetUnavailable(f"budget cannot be checked ({why}); workflow is fail_closed")
        left = max(1, budget.max_tokens_per_invocation - self.estimate)
        return Reservation(allowed=True, max_tokens=min(self.req.max_tokens or left, left))

    # --- after the reply --------------------------------------------------------------

    def _result(self, status: Status, **fields) -> InvokeResult:
        return InvokeResult(
            invocation_id=self.req.invocation_id,
            status=status,
            workflow=self.req.workflow,
            latency_ms=round((time.perf_counter() - self.started) * 1000, 3),
            trace_id=self.trace_id,
            config_version=self.active.version,
            **fields,
        )

    def record(self, result: InvokeResult) -> None:
        """Settle, emit events, log and count; runs after the agent has its reply."""
        req, bus = self.req, self.bus
        if self.reservation is not None and self.reservation.reserved_tokens:
            bus.spawn(
                bus.publish(
                    names.budget_settle(self.env),
                    SettleRequest(
                        invocation_id=req.invocation_id,
                        workflow=req.workflow,
                        session_id=req.session_id,
                        reserved_tokens=self.reservation.reserved_tokens,
                        prompt_tokens=result.usage.prompt_tokens,
                        completion_tokens=result.usage.completion_tokens,
                        model=result.model,
                    ),
                )
            )
        common = {"invocation_id": req.invocation_id, "workflow": req.workflow, "trace_id": self.trace_id}
        tried = [a for a in result.attempts if a.outcome is not AttemptOutcome.SKIPPED]
        for a in tried:
            bus.emit_later("attempt", **common, **a.model_dump(mode="json", exclude_none=True))
        for before, after in zip(result.attempts, result.attempts[1:], strict=False):
            if before.outcome is AttemptOutcome.OK or before.outcome is AttemptOutcome.CLIENT_ERROR:
                break
            reason = (
                before.outcome.value
                if before.outcome is not AttemptOutcome.SKIPPED
                else (before.reason or "skipped")
            )
            metrics.FALLBACKS.labels(
                req.workflow,
                f"{before.provider}/{before.model}",
                f"{after.provider}/{after.model}",
                before.outcome.value,
            ).inc()
            bus.emit_later(
                "fallback",
                **common,
                from_tier=before.tier,
                from_provider=before.provider,
                from_model=before.model,
                to_tier=after.tier,
                to_provider=after.provider,
                to_model=after.model,
                reason=reason,
                outcome=before.outcome.value,
            )
        usage = result.usage
        bus.emit_later(
            "invocation",
            **common,
            session_id=req.session_id,
            agent=req.agent,
            status=result.status.value,
            provider=result.provider,
            model=result.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            estimated_prompt_tokens=self.estimate,
            latency_ms=result.latency_ms,
            attempts=[a.model_dump(mode="json", exclude_none=True) for a in result.attempts],
            error=result.error.model_dump(mode="json") if result.error else None,
            config_version=result.config_version,
            metadata=req.metadata,
            message_count=len(req.messages),
            output_chars=len(result.output or ""),
        )
        provider, model = result.provider or "", result.model or ""
        metrics.INVOCATIONS.labels(req.workflow, result.status.value, provider, model).inc()
        metrics.INVOCATION_LATENCY.labels(req.workflow, result.status.value).observe(result.latency_ms / 1000)
        if usage.prompt_tokens or usage.completion_tokens:
            metrics.TOKENS.labels(req.workflow, provider, model, "prompt").inc(usage.prompt_tokens)
            metrics.TOKENS.labels(req.workflow, provider, model, "completion").inc(usage.completion_tokens)
        log.info(
            "invocation",
            extra={
                "workflow": req.workflow,
                "invocation_id": req.invocation_id,
                "session_id": req.session_id,
                "agent": req.agent,
                "status": result.status.value,
                "provider": result.provider,
                "model": result.model,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "latency_ms": result.latency_ms,
                "attempts": len(tried),
                "fallback": result.status is Status.FALLBACK,
                "error_code": result.error.code if result.error else None,
                "config_version": result.config_version,
                "trace_id": self.trace_id,
            },
        )
        span = trace.get_current_span()
        span.set_attribute("switchboard.status", result.status.value)

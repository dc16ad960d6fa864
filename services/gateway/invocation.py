"""One invocation's path through the gateway: reserve, then plan, walk the tiers, then settle,
emit events, log one line and count it.

The reservation is decided before the router is asked: the router debits a provider's
per-minute quota when it hands out a tier, so a call the budget refuses must never reach it."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from redis.exceptions import RedisError

from services.gateway import access_log
from shared import errors, names, pricing, provider_state, tokens
from shared.contracts import (
    Attempt,
    AttemptEvent,
    AttemptOutcome,
    BudgetUnavailableEvent,
    ErrorInfo,
    FallbackEvent,
    InvocationEvent,
    InvokeRequest,
    InvokeResult,
    Plan,
    PlannedTier,
    PlanRequest,
    Reservation,
    ReserveRequest,
    SettleRequest,
    Status,
    TierOutcome,
    Usage,
)
from shared.live_config import ActivePolicy
from shared.policy import WorkflowSpec
from shared.providers import ProviderCallError
from shared.providers.base import CallParams
from shared.telemetry import genai, metrics, tracing

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
        trace.get_current_span().set_attributes(
            {"switchboard.invocation_id": req.invocation_id, "switchboard.workflow": req.workflow}
        )
        self.reservation: Reservation | None = None
        self.estimate = 0

    # --- the call ---------------------------------------------------------------------

    async def execute(self) -> InvokeResult:
        """Run the invocation whose id this gateway has claimed (see `Idempotency.begin`)."""
        req = self.req
        self.estimate = self._estimate()
        reservation = await self._reserve()
        self.reservation = reservation  # held until settled, even if planning fails
        if not reservation.allowed:
            return self._refused(reservation)
        plan = await self._plan(0)
        params = CallParams(
            max_tokens=reservation.max_tokens or req.max_tokens or 1,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stop,
        )
        attempts: list[Attempt] = []
        failure: ProviderCallError | None = None
        tried = False
        while True:
            attempts += [
                Attempt(
                    tier=s.tier,
                    provider=s.provider,
                    model=s.model,
                    outcome=AttemptOutcome.SKIPPED,
                    reason=s.reason,
                    source=s.source,
                )
                for s in plan.skipped
            ]
            for tier in plan.tiers:
                tried = True
                attempt, completion, failure = await self._try(tier, params)
                attempts.append(attempt)
                if completion is not None:
                    return self._result(
                        Status.SUCCESS if attempt.tier == 0 else Status.FALLBACK,
                        attempts=attempts,
                        provider=tier.provider,
                        model=tier.model,
                        output=completion.output,
                        finish_reason=completion.finish_reason,
                        usage=Usage(
                            prompt_tokens=completion.prompt_tokens,
                            completion_tokens=completion.completion_tokens,
                        ),
                    )
                if not failure.fallback:
                    break
            if (failure is not None and not failure.fallback) or plan.next_tier is None:
                break
            plan = await self._plan(plan.next_tier)
        if failure is not None and not failure.fallback:
            error: errors.SwitchboardError = errors.ProviderError(failure.message)
        elif not tried:
            error = errors.NoRoute(f"no tier of {req.workflow!r} can be tried now")
        else:
            error = errors.AllTiersFailed(f"every tier of {req.workflow!r} failed")
        return self._result(Status.ERROR, attempts=attempts, error=errors.to_wire(error))

    def failed(self, exc: errors.SwitchboardError) -> InvokeResult:
        return self._result(Status.ERROR, error=errors.to_wire(exc))

    def rejected(self, exc: errors.SwitchboardError) -> InvokeResult:
        """Refused before it started (a stop switch): nothing reserved, no provider called."""
        return self._result(Status.REJECTED, error=errors.to_wire(exc))

    def _refused(self, reservation: Reservation) -> InvokeResult:
        breach = reservation.breach
        return self._result(
            Status.BUDGET_EXCEEDED,
            error=ErrorInfo(
                code="budget_exceeded",
                message=breach.message if breach else "budget exceeded",
                details=[breach.model_dump(mode="json")] if breach else None,
            ),
        )

    async def _try(self, tier: PlannedTier, params: CallParams):
        """Call one tier: (attempt, completion or None, failure or None)."""
        adapter = self.gw.providers.get(tier.provider)
        if adapter is None:
            failure = ProviderCallError(AttemptOutcome.SKIPPED, "provider not in this gateway's policy")
            return self._attempt(tier, failure.outcome, 0.0, reason=failure.message), None, failure
        t0 = time.perf_counter()
        with _tracer.start_as_current_span(
            genai.span_name(tier.model),
            kind=SpanKind.CLIENT,
            attributes={
                **genai.request_attributes(adapter.spec.kind.value, tier.model, params),
                "switchboard.tier": tier.tier,
                "switchboard.provider": tier.provider,
            },
        ) as span:
            try:
                timeout_s = tier.timeout_ms / 1000
                completion = await adapter.complete(tier.model, self.req.messages, params, timeout_s)
            except ProviderCallError as exc:
                latency = (time.perf_counter() - t0) * 1000
                span.set_status(StatusCode.ERROR, exc.outcome.value)
                span.set_attributes(
                    {"error.type": exc.outcome.value, "switchboard.outcome": exc.outcome.value}
                )
                self._report(
                    tier, exc.outcome, latency, status_code=exc.status_code, retry_after_s=exc.retry_after_s
                )
                attempt = self._attempt(
                    tier, exc.outcome, latency, status_code=exc.status_code, reason=exc.message
                )
                return attempt, None, exc
            span.set_attributes(genai.response_attributes(tier.model, completion))
        latency = (time.perf_counter() - t0) * 1000
        self._report(
            tier,
            AttemptOutcome.OK,
            latency,
            status_code=200,
            tokens=completion.prompt_tokens + completion.completion_tokens,
        )
        return self._attempt(tier, AttemptOutcome.OK, latency, status_code=200), completion, None

    @staticmethod
    def _attempt(tier: PlannedTier, outcome: AttemptOutcome, latency_ms: float, **fields) -> Attempt:
        return Attempt(
            tier=tier.tier,
            provider=tier.provider,
            model=tier.model,
            outcome=outcome,
            latency_ms=round(latency_ms, 3),
            **fields,
        )

    def _report(self, tier: PlannedTier, outcome: AttemptOutcome, latency_ms: float, **fields) -> None:
        """Count the call, and tell the router so cooldowns, circuits and quotas follow real calls."""
        metrics.PROVIDER_ATTEMPTS.labels(tier.provider, tier.model, outcome.value).inc()
        metrics.PROVIDER_LATENCY.labels(tier.provider, tier.model).observe(latency_ms / 1000)
        report = TierOutcome(
            invocation_id=self.req.invocation_id,
            workflow=self.req.workflow,
            provider=tier.provider,
            model=tier.model,
            outcome=outcome,
            **fields,
        )
        self.gw.outcomes.report(report)

    # --- control services -------------------------------------------------------------

    async def _plan(self, start: int) -> Plan:
        """The router's next tier from `start`; if the router is down, the policy's tiers in order."""
        req = self.req
        try:
            plan = await self.bus.request(
                names.router_plan(self.env),
                PlanRequest(
                    invocation_id=req.invocation_id,
                    workflow=req.workflow,
                    metadata=req.metadata,
                    start_tier=start,
                ),
                Plan,
                timeout=self.gw.settings.control_timeout_s,
                unavailable=errors.RouterUnavailable,
            )
        except errors.RouterUnavailable as exc:
            log.warning(
                "router unavailable; planning from local policy",
                extra={"invocation_id": req.invocation_id, "error": str(exc)},
            )
            return await self._local_plan(start)
        if plan.error is not None:
            if plan.error.code == errors.UnknownWorkflow.code:
                return await self._local_plan(start)  # the router runs another policy version
            raise errors.from_wire(plan.error)
        return plan

    async def _local_plan(self, start: int) -> Plan:
        """The policy's tiers from `start`, without those an operator blocked, cooling down after
        a 429 or with an open circuit (read from the router's state in Redis); every tier when
        that state cannot be read either. Quotas are the router's to debit: not checked here."""
        tiers = [
            PlannedTier(
                tier=i, provider=t.provider, model=t.model, timeout_ms=t.timeout_ms, slo_p99_ms=t.slo_p99_ms
            )
            for i, t in enumerate(self.workflow.tiers)
            if i >= start
        ]
        try:
            ruled_out = await provider_state.unavailable(self.gw.redis, self.env, tiers)
        except RedisError as exc:
            log.warning(
                "provider state unavailable; trying every tier in policy order",
                extra={"invocation_id": self.req.invocation_id, "error": repr(exc)},
            )
            ruled_out = {}
        return Plan(
            workflow=self.req.workflow,
            config_version=self.active.version,
            tiers=[t for t in tiers if t.tier not in ruled_out],
            skipped=list(ruled_out.values()),
        )

    def _estimate(self) -> int:
        """Prompt tokens, as the densest tokenizer of any tier that may answer would count them."""
        providers = self.active.policy.providers
        families = {providers[t.provider].models[t.model].tokenizer for t in self.workflow.tiers} | {None}
        return max(tokens.estimate(self.req.messages, family) for family in families)

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
                    agent=req.agent,
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
            BudgetUnavailableEvent(
                invocation_id=self.req.invocation_id,
                workflow=self.req.workflow,
                session_id=self.req.session_id,
                mode=budget.on_unavailable,
                reason=why,
                config_version=self.active.version,
                trace_id=self.trace_id,
            )
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

    async def settle(self, usage: Usage | None = None, model: str | None = None) -> None:
        """Turn the budget reservation into actual usage (none releases it all). The first send
        only enters the connection's buffer, so whatever is published after it on the same
        connection (the reply) is sent after it; `Settler` repeats it until acknowledged."""
        if self.reservation is None or not self.reservation.reserved_tokens:
            return
        req = self.req
        settle = SettleRequest(
            invocation_id=req.invocation_id,
            workflow=req.workflow,
            session_id=req.session_id,
            agent=req.agent,
            reserved_tokens=self.reservation.reserved_tokens,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            model=model,
        )
        await self.gw.settler.send(settle, self.workflow.budget.reservation_ttl_s)

    def _cost_usd(self, result: InvokeResult) -> float | None:
        """What the answer cost at the answering model's prices (None when nothing answered)."""
        if not result.provider or not result.model:
            return None
        usage = result.usage
        try:
            micro = pricing.micro_usd(
                self.active.policy,
                result.provider,
                result.model,
                usage.prompt_tokens,
                usage.completion_tokens,
            )
        except KeyError:
            return None
        return round(micro / 1_000_000, 9)

    def record(self, result: InvokeResult) -> None:
        """Emit events (in the background), log and count."""
        req, bus = self.req, self.bus
        common = {
            "invocation_id": req.invocation_id,
            "workflow": req.workflow,
            "trace_id": self.trace_id,
            "config_version": self.active.version,
        }
        tried = [a for a in result.attempts if a.outcome is not AttemptOutcome.SKIPPED]
        for a in tried:
            bus.emit_later(AttemptEvent(**common, **a.model_dump(exclude={"source"})))
        for before, after in zip(result.attempts, result.attempts[1:], strict=False):
            if before.outcome is AttemptOutcome.OK or before.outcome is AttemptOutcome.CLIENT_ERROR:
                break
            skipped = before.outcome is AttemptOutcome.SKIPPED
            reason = (before.reason or "skipped") if skipped else before.outcome.value
            metrics.FALLBACKS.labels(
                req.workflow,
                f"{before.provider}/{before.model}",
                f"{after.provider}/{after.model}",
                (before.source or "skipped") if skipped else before.outcome.value,
            ).inc()
            bus.emit_later(
                FallbackEvent(
                    **common,
                    from_tier=before.tier,
                    from_provider=before.provider,
                    from_model=before.model,
                    to_tier=after.tier,
                    to_provider=after.provider,
                    to_model=after.model,
                    reason=reason,
                    outcome=before.outcome,
                    source=before.source,
                )
            )
        usage = result.usage
        cost = self._cost_usd(result)
        bus.emit_later(
            InvocationEvent(
                **common,
                session_id=req.session_id,
                agent=req.agent,
                status=result.status,
                provider=result.provider,
                model=result.model,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                max_tokens=req.max_tokens,
                estimated_prompt_tokens=self.estimate,
                latency_ms=result.latency_ms,
                attempts=result.attempts,
                error=result.error,
                metadata=req.metadata,
                message_count=len(req.messages),
                output_chars=len(result.output or ""),
                cost_usd=cost,
            )
        )
        provider, model = result.provider or "", result.model or ""
        metrics.INVOCATIONS.labels(req.workflow, result.status.value, provider, model).inc()
        metrics.INVOCATION_LATENCY.labels(req.workflow, result.status.value).observe(result.latency_ms / 1000)
        if usage.prompt_tokens or usage.completion_tokens:
            metrics.TOKENS.labels(req.workflow, provider, model, "prompt").inc(usage.prompt_tokens)
            metrics.TOKENS.labels(req.workflow, provider, model, "completion").inc(usage.completion_tokens)
        if cost:
            metrics.SPEND.labels(req.workflow, provider, model).inc(cost)
        access_log.invocation(
            req, result, estimate=self.estimate, attempts=len(tried), trace_id=self.trace_id
        )
        span = trace.get_current_span()
        span.set_attribute("switchboard.status", result.status.value)

"""router: keeps the provider state the gateways plan from (shared/provider_state.py): learns
cooldowns and circuits from every call's outcome, takes operators' blocks, reports status and
quota headroom, and tells agents their workflow's degradation plan. The state lives in Redis, so
every replica agrees and a gateway plans without asking the router."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

from nats.aio.msg import Msg
from redis.exceptions import RedisError

from services.router.health import ProviderHealth
from shared import names
from shared.contracts import (
    AttemptOutcome,
    BlockReply,
    BlockRequest,
    CircuitEvent,
    Degradation,
    DegradationPlan,
    DegradationRequest,
    DirectTier,
    ProviderBlockEvent,
    ProviderState,
    ProviderStatusReply,
    ProviderStatusRequest,
    RateLimitEvent,
    RateLimitSource,
    TierOutcome,
)
from shared.service import Service
from shared.settings import Settings
from shared.telemetry import metrics
from switchboard_sdk import errors

log = logging.getLogger("switchboard.router")


class RouterSettings(Settings):
    http_port: int = 9102
    headroom_interval_s: float = 5.0  # how often quota headroom gauges are refreshed


class RouterService(Service):
    name = "router"
    settings_class = RouterSettings
    uses_redis = True

    async def setup(self, stack: AsyncExitStack) -> None:
        env = self.settings.env
        self.provider_state = ProviderHealth(self.redis, env)
        task = asyncio.create_task(self._export_headroom_forever())
        stack.callback(task.cancel)
        await self.bus.serve(
            names.router_outcome(env),
            names.ROUTER_QUEUE,
            TierOutcome,
            self.outcome,
            lambda exc, _: ProviderStatusReply(error=errors.to_wire(exc)),  # published: never sent
        )
        await self.bus.serve(
            names.router_status(env),
            names.ROUTER_QUEUE,
            ProviderStatusRequest,
            self.status,
            lambda exc, _: ProviderStatusReply(error=errors.to_wire(exc)),
        )
        await self.bus.serve(
            names.router_block(env),
            names.ROUTER_QUEUE,
            BlockRequest,
            self.block,
            lambda exc, _: BlockReply(provider="", blocked=False, error=errors.to_wire(exc)),
        )

        await self.bus.serve(
            names.degradation(env),
            names.ROUTER_QUEUE,
            DegradationRequest,
            self.degradation,
            lambda exc, _: DegradationPlan(workflow="", error=errors.to_wire(exc)),
        )

    def _workflow(self, name: str):
        active = self.config.active
        workflow = active.policy.workflows.get(name)
        if workflow is None:
            raise errors.UnknownWorkflow(f"no workflow named {name!r} in policy {active.version}")
        return active, workflow

    async def degradation(self, req: DegradationRequest, _: Msg) -> DegradationPlan:
        """What an agent of this workflow does while the plane is unreachable; for passthrough,
        the tiers as the agent calls them (no keys: only the names of its own variables)."""
        active, workflow = self._workflow(req.workflow)
        plan = DegradationPlan(
            workflow=req.workflow,
            mode=workflow.degradation,
            config_version=active.version,
            max_tokens_per_invocation=workflow.budget.max_tokens_per_invocation,
        )
        if workflow.degradation is Degradation.PASSTHROUGH:
            providers = active.policy.providers
            plan.tiers = [
                DirectTier(
                    provider=t.provider,
                    kind=providers[t.provider].kind.value,
                    base_url=providers[t.provider].base_url,
                    model=t.model,
                    api_key_env=providers[t.provider].api_key_env,
                    timeout_ms=t.timeout_ms,
                )
                for t in workflow.tiers
            ]
        return plan

    async def outcome(self, req: TierOutcome, _: Msg) -> None:
        active = self.config.active
        spec = active.policy.providers.get(req.provider)
        if spec is None:
            return None
        try:
            failures, is_open = await self.provider_state.record(spec, req)
        except RedisError as exc:
            log.warning("provider outcome not recorded", extra={"error": repr(exc), "provider": req.provider})
            return None
        if req.outcome is AttemptOutcome.RATE_LIMITED:
            metrics.RATE_LIMIT_EVENTS.labels(req.provider, req.model, "provider_429").inc()
            self.bus.emit_later(
                RateLimitEvent(
                    invocation_id=req.invocation_id,
                    workflow=req.workflow,
                    provider=req.provider,
                    model=req.model,
                    source=RateLimitSource.PROVIDER_429,
                    retry_after_s=req.retry_after_s,
                    cooldown=spec.cooldown.enabled,
                    config_version=active.version,
                )
            )
        if is_open and failures == spec.circuit.failures:
            log.warning("circuit opened", extra={"provider": req.provider, "failures": failures})
            self.bus.emit_later(
                CircuitEvent(
                    provider=req.provider,
                    state="open",
                    failures=failures,
                    open_s=spec.circuit.open_s,
                    invocation_id=req.invocation_id,
                    config_version=active.version,
                )
            )
        return None

    async def status(self, req: ProviderStatusRequest, _: Msg) -> ProviderStatusReply:
        active = self.config.active
        if req.provider is not None and req.provider not in active.policy.providers:
            raise errors.NotFound(f"no provider named {req.provider!r} in policy {active.version}")
        try:
            providers = await self.provider_state.status(active.policy, req.provider)
        except RedisError as exc:
            raise errors.Unavailable(f"provider state unavailable: {type(exc).__name__}") from exc
        _export_headroom(providers)
        return ProviderStatusReply(config_version=active.version, providers=providers)

    async def block(self, req: BlockRequest, _: Msg) -> BlockReply:
        if req.provider not in self.config.active.policy.providers:
            raise errors.NotFound(f"no provider named {req.provider!r} in the active policy")
        try:
            if req.blocked:
                await self.provider_state.block(req.provider, req.reason)
            else:
                await self.provider_state.unblock(req.provider)
        except RedisError as exc:
            raise errors.Unavailable(f"provider state unavailable: {type(exc).__name__}") from exc
        log.warning(
            "provider %s",
            "blocked" if req.blocked else "unblocked",
            extra={"provider": req.provider, "reason": req.reason, "by": req.by},
        )
        await self.bus.emit(
            ProviderBlockEvent(
                provider=req.provider,
                blocked=req.blocked,
                reason=req.reason,
                by=req.by,
                config_version=self.config.active.version,
            )
        )
        return BlockReply(provider=req.provider, blocked=req.blocked)

    async def _export_headroom_forever(self) -> None:
        """Keep the quota headroom gauges current for Prometheus, whether or not anyone asks."""
        while True:
            await asyncio.sleep(self.settings.headroom_interval_s)
            try:
                _export_headroom(await self.provider_state.status(self.config.active.policy))
            except RedisError as exc:
                log.debug("headroom not refreshed", extra={"error": repr(exc)})


def _export_headroom(providers: list[ProviderState]) -> None:
    """Quota headroom and limits (provider-wide as model "*"), and circuit state, as gauges."""
    for p in providers:
        metrics.CIRCUIT_OPEN.labels(p.provider).set(1 if p.circuit_open_ms > 0 else 0)
        for model, state in (("*", p), *((m.model, m) for m in p.models)):
            for gauge, value in (
                (metrics.QUOTA_REQUEST_HEADROOM, state.request_headroom),
                (metrics.QUOTA_TOKEN_HEADROOM, state.token_headroom),
                (metrics.QUOTA_REQUEST_LIMIT, state.rpm),
                (metrics.QUOTA_TOKEN_LIMIT, state.tpm),
            ):
                if value is not None:
                    gauge.labels(p.provider, model).set(value)

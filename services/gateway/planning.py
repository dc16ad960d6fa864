"""The gateway's plan: the tier to call now, routing around providers that an operator blocked,
that cool down after a 429, whose circuit is open or that are out of quota. Decided in this
process with one call of the shared acquire script (shared/provider_state.py), which debits
the quota of the tier it hands out; the router keeps the state the script reads.

Asked after the budget and the pre review gate: a call they refuse must take no quota."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from pydantic import Field
from redis.exceptions import RedisError

from shared.bus import Bus
from shared.contracts import (
    DRILL_AVOID_METADATA,
    InvokeRequest,
    Open,
    RateLimitEvent,
    RateLimitSource,
)
from shared.live_config import ActivePolicy
from shared.policy import TierSpec, WorkflowSpec
from shared.provider_state import SKIP_REASONS, TierAcquirer, TierCheck
from shared.telemetry import metrics

log = logging.getLogger("switchboard.planning")


class PlannedTier(Open):
    tier: int
    provider: str
    model: str
    timeout_ms: int
    slo_p99_ms: int | None = None


class SkippedTier(Open):
    tier: int
    provider: str
    model: str
    reason: str
    source: str | None = None  # blocked | cooldown | circuit_open | local_quota | drill


class Plan(Open):
    """Tiers to try now, in order (one is acquired at a time: quotas are debited per call);
    `next_tier` is where to plan again if they all fail, None when the chain is done. Made and
    read in the gateway's process only: since planning left the router it crosses no wire."""

    workflow: str
    config_version: str
    tiers: list[PlannedTier]
    skipped: list[SkippedTier] = Field(default_factory=list)
    next_tier: int | None = None


class Planner:
    def __init__(self, redis: aioredis.Redis, env: str, bus: Bus) -> None:
        self.acquirer = TierAcquirer(redis, env)
        self.bus = bus

    async def plan(
        self, req: InvokeRequest, active: ActivePolicy, workflow: WorkflowSpec, start: int
    ) -> Plan:
        """The acquired tier from `start` (if any) and the tiers skipped before it; every tier
        from `start` in policy order when the provider state cannot be read."""
        if start >= len(workflow.tiers):
            return Plan(workflow=req.workflow, config_version=active.version, tiers=[])
        try:
            checks = await self._checks(active, workflow.tiers, start, req.metadata)
        except RedisError as exc:
            log.warning(
                "provider state unavailable; planning from policy alone",
                extra={"invocation_id": req.invocation_id, "error": repr(exc)},
            )
            return static(req.workflow, workflow, active.version, start)
        plan = from_checks(req.workflow, workflow, checks, active.version)
        for skip in plan.skipped:
            if skip.source == "local_quota":
                metrics.RATE_LIMIT_EVENTS.labels(skip.provider, skip.model, "local_quota").inc()
                self.bus.emit_later(
                    RateLimitEvent(
                        invocation_id=req.invocation_id,
                        workflow=req.workflow,
                        provider=skip.provider,
                        model=skip.model,
                        source=RateLimitSource.LOCAL_QUOTA,
                        detail=skip.reason,
                        config_version=active.version,
                    )
                )
        return plan

    async def _checks(
        self, active: ActivePolicy, tiers: list[TierSpec], start: int, metadata: dict
    ) -> list[TierCheck]:
        """Acquire the first available tier from `start`; a drill's invocation (see
        DRILL_AVOID_METADATA) skips the drilled provider's tiers as if it were blocked, for
        itself only (one script call per stretch of tiers between them)."""
        avoid = metadata.get(DRILL_AVOID_METADATA)
        checks: list[TierCheck] = []
        while start < len(tiers):
            if tiers[start].provider == avoid:
                checks.append(TierCheck(start, "drill", str(avoid)))
                start += 1
                continue
            end = next((i for i in range(start, len(tiers)) if tiers[i].provider == avoid), len(tiers))
            found = await self.acquirer.acquire(active.policy, tiers[:end], start)
            checks += found
            if found and found[-1].status == "ok":
                break
            start = end
        return checks


def planned(index: int, tier: TierSpec) -> PlannedTier:
    return PlannedTier(
        tier=index,
        provider=tier.provider,
        model=tier.model,
        timeout_ms=tier.timeout_ms,
        slo_p99_ms=tier.slo_p99_ms,
    )


def from_checks(name: str, workflow: WorkflowSpec, checks: list[TierCheck], version: str) -> Plan:
    """The acquired tier (if any) to try now, the tiers skipped before it, and where to go on."""
    tiers, skipped = [], []
    for check in checks:
        tier = workflow.tiers[check.index]
        if check.status == "ok":
            tiers.append(planned(check.index, tier))
        else:
            skipped.append(
                SkippedTier(
                    tier=check.index,
                    provider=tier.provider,
                    model=tier.model,
                    reason=SKIP_REASONS[check.status].format(check.detail),
                    source=check.status,
                )
            )
    nxt = tiers[0].tier + 1 if tiers and tiers[0].tier + 1 < len(workflow.tiers) else None
    return Plan(workflow=name, config_version=version, tiers=tiers, skipped=skipped, next_tier=nxt)


def static(name: str, workflow: WorkflowSpec, version: str, start: int = 0) -> Plan:
    """Every tier from `start` in policy order: the plan when provider state cannot be read."""
    return Plan(
        workflow=name,
        config_version=version,
        tiers=[planned(i, t) for i, t in enumerate(workflow.tiers) if i >= start],
    )

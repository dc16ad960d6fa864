"""From a workflow's policy and the providers' current state to an ordered plan of tiers."""

from __future__ import annotations

from shared.contracts import PlannedTier, SkippedTier
from shared.policy import WorkflowSpec


def plan_tiers(
    workflow: WorkflowSpec, blocked: dict[str, str]
) -> tuple[list[PlannedTier], list[SkippedTier]]:
    """Tiers in policy order, leaving out those whose provider an operator has blocked."""
    tiers, skipped = [], []
    for i, tier in enumerate(workflow.tiers):
        if tier.provider in blocked:
            skipped.append(
                SkippedTier(
                    tier=i,
                    provider=tier.provider,
                    model=tier.model,
                    reason=f"blocked: {blocked[tier.provider]}",
                )
            )
            continue
        tiers.append(
            PlannedTier(
                tier=i,
                provider=tier.provider,
                model=tier.model,
                timeout_ms=tier.timeout_ms,
                slo_p99_ms=tier.slo_p99_ms,
            )
        )
    return tiers, skipped

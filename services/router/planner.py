"""From a workflow's tiers and the checks of shared provider state to the plan the gateway follows."""

from __future__ import annotations

from services.router.health import TierCheck
from shared.contracts import Plan, PlannedTier, SkippedTier
from shared.policy import TierSpec, WorkflowSpec
from shared.provider_state import SKIP_REASONS


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

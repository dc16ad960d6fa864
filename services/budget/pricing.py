"""What an invocation costs, in whole micro-USD, from the per-model prices of the policy.

A price in USD per million tokens is a price in micro-USD per token, so costs stay integers
that Redis adds exactly. Costs round up: spend may be over-counted by a micro-dollar, never
under-counted.
"""

from __future__ import annotations

import math

from shared import pricing as shared_pricing
from shared.policy import Policy, TierSpec, WorkflowSpec


def micro_usd(usd: float) -> int:
    return round(usd * 1_000_000)


def usd(micro: float) -> float:
    return micro / 1_000_000


def format_usd(micro: float) -> str:
    return f"${usd(micro):.6f}".rstrip("0").rstrip(".")


def _cost(policy: Policy, tier: TierSpec, prompt_tokens: int, completion_tokens: int) -> int:
    exact = shared_pricing.micro_usd(policy, tier.provider, tier.model, prompt_tokens, completion_tokens)
    return math.ceil(round(exact, 6))


def worst_case(
    policy: Policy, workflow: WorkflowSpec, prompt_tokens: int, completion_tokens: int
) -> tuple[int, str]:
    """The dearest tier's cost (any tier may end up answering) and which tier that is."""
    return max(
        (_cost(policy, t, prompt_tokens, completion_tokens), f"{t.provider}/{t.model}")
        for t in workflow.tiers
    )


def actual(
    policy: Policy, workflow: WorkflowSpec, model: str | None, prompt_tokens: int, completion_tokens: int
) -> int:
    """The cost at the model that answered; at the dearest tier when it is not in the workflow."""
    costs = [_cost(policy, t, prompt_tokens, completion_tokens) for t in workflow.tiers if t.model == model]
    return max(costs) if costs else worst_case(policy, workflow, prompt_tokens, completion_tokens)[0]

"""What tokens cost at a model's prices in the policy. A price in USD per million tokens is a
price in micro-USD per token, so the exact cost in micro-USD is a plain weighted sum."""

from __future__ import annotations

from shared.policy import Policy


def micro_usd(policy: Policy, provider: str, model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """Exact cost in micro-USD; KeyError when the policy does not price that model."""
    spec = policy.providers[provider].models[model]
    return prompt_tokens * spec.input_usd_per_mtok + completion_tokens * spec.output_usd_per_mtok

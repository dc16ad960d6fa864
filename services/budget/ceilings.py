"""The per-invocation token ceiling: estimate + requested completion must fit under it."""

from __future__ import annotations

from shared.contracts import Breach, BudgetScope


def check_invocation(
    estimated_prompt: int, max_tokens: int | None, ceiling: int
) -> tuple[int, Breach | None]:
    """The completion limit to send, or the breach. No `max_tokens` means what the ceiling leaves."""
    if max_tokens is None:
        left = ceiling - estimated_prompt
        if left > 0:
            return left, None
        requested = estimated_prompt
    else:
        requested = estimated_prompt + max_tokens
        if requested <= ceiling:
            return max_tokens, None
    over = requested - ceiling
    return 0, Breach(
        scope=BudgetScope.INVOCATION,
        estimated_tokens=requested,
        ceiling=ceiling,
        remaining=max(0, ceiling - estimated_prompt),
        message=(
            f"per-invocation ceiling of {ceiling} tokens exceeded by {over}: "
            f"~{estimated_prompt} prompt tokens estimated"
            + (f" + {max_tokens} max_tokens requested" if max_tokens is not None else "")
        ),
    )

"""Conservative prompt-token estimates, made before any provider is called.

The budget must refuse a call that could overrun, so an estimate may be high but should not
be low. Real BPE tokenizers average about 4 characters of English per token and rarely go
below 1 token per 3 UTF-8 bytes outside CJK text; the default counts 1 token per 3 bytes
plus a per-message framing overhead, which over-counts English by roughly a quarter.
Estimators are pluggable per model family (a model's `tokenizer` in the policy names one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shared.contracts import Message

Estimator = Callable[[Sequence[Message]], int]

MESSAGE_OVERHEAD = 4  # role and framing tokens each chat message costs
REPLY_PRIMING = 3  # tokens every chat reply is primed with


def bytes_estimate(messages: Sequence[Message], bytes_per_token: float = 3.0) -> int:
    total = REPLY_PRIMING
    for m in messages:
        total += MESSAGE_OVERHEAD + int(len(m.content.encode()) / bytes_per_token + 0.999)
    return total


ESTIMATORS: dict[str, Estimator] = {
    "default": bytes_estimate,
    # CJK-heavy or code-heavy model families can be more token-dense than the default.
    "dense": lambda messages: bytes_estimate(messages, bytes_per_token=2.0),
}


def register(family: str, estimator: Estimator) -> None:
    """Plug in a real tokenizer for a model family (e.g. tiktoken for `openai`)."""
    ESTIMATORS[family] = estimator


def estimate(messages: Sequence[Message], family: str | None = None) -> int:
    return ESTIMATORS.get(family or "default", bytes_estimate)(messages)

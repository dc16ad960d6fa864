"""Deterministic completion text and token accounting for the provider simulator.

Tests, drills and benchmarks need replies they can assert on, so the text is a pure
function of (provider, model, last user message) and never of time or randomness.
Token counts are a cheap approximation (about 4 characters per token) that still
behaves like a real provider: longer prompts cost more, max_tokens truncates.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

DEFAULT_MAX_TOKENS = 64
MIN_WORDS = 8
MAX_WORDS = 48
PER_MESSAGE_OVERHEAD = 4

# 64 words, so one hash byte (mod 64) picks a word.
_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
    "zulu amber basalt cobalt dune ember fjord granite harbor iris jasper kelp lagoon "
    "meadow nickel opal pine quartz river slate tundra umber violet willow xenon yarrow "
    "zephyr atlas beacon cedar drift estuary falcon glacier heron ivory juniper kestrel lantern"
).split()
assert len(_WORDS) == 64


def text_of(content: Any) -> str:
    """Flatten message content: a plain string or a list of ``{type: "text", text}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def _cost(text: str) -> int:
    return -(-len(text) // 4) + PER_MESSAGE_OVERHEAD


def prompt_tokens(messages: list[dict[str, Any]], system: Any = None) -> int:
    """Sum of ceil(len(content)/4) + 4 per message, plus the system prompt counted alike."""
    total = sum(_cost(text_of(m.get("content"))) for m in messages)
    if system:
        total += _cost(text_of(system))
    return total


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """Text of the last ``user`` message ("" if none): the only prompt input to the reply."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return text_of(m.get("content"))
    return ""


@lru_cache(maxsize=4096)
def _words_for(provider: str, model: str, prompt: str) -> tuple[str, ...]:
    digest = hashlib.blake2b(
        f"{provider}\x00{model}\x00{prompt}".encode("utf-8", "surrogatepass"), digest_size=64
    ).digest()
    n = MIN_WORDS + digest[0] % (MAX_WORDS - MIN_WORDS + 1)
    return tuple(_WORDS[b & 63] for b in digest[1 : 1 + n])


def generate(provider: str, model: str, prompt: str, max_tokens: int | None) -> tuple[str, int, bool]:
    """Return (text, completion_tokens, truncated).

    The natural length is 8..48 words; the reply is cut to ``max_tokens`` (default 64)
    and ``truncated`` is True when the cut bites. The ``[provider/model]`` prefix is a
    label, not generated output, so it is not counted as completion tokens.
    """
    words = _words_for(provider, model, prompt)
    limit = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    truncated = max_tokens is not None and max_tokens <= len(words)
    if limit < len(words):
        words = words[:limit]
    return f"[{provider}/{model}] " + " ".join(words), len(words), truncated


def pieces(text: str, provider: str, model: str) -> list[str]:
    """A generated text as stream chunks, one per completion token (word): the label rides with
    the first word, every later word brings its leading space."""
    label = f"[{provider}/{model}] "
    first, *rest = text[len(label) :].split(" ")
    return [label + first, *(f" {word}" for word in rest)]

"""Fault rules for the provider simulator (pure logic, no I/O).

Drills and tests switch failures on and off at run time; keeping the matching rules
here, away from HTTP, makes them easy to reason about and cheap when no rule exists.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

# "401" answers as a provider that refuses the key and echoes it back in the error message.
# "break" drops the connection after `after_chunks` content chunks of a stream (part of the body
# when the request does not stream): a stream that stops half-way without an end event.
# "overrun" answers as if no max_tokens had been asked for: a provider that ignores the cap.
# "oversize" makes the word after `after_chunks` words OVERSIZE_BYTES long: in a stream, one chunk
# larger than a NATS message may be (1 MiB by default), which a gateway cannot relay.
# "drip" streams one content chunk every `latency_ms` for as long as the rule is in place, and the
# rest at once when it is removed: a long stream that a test releases (a request that does not
# stream is answered at once).
KINDS = frozenset(
    {"429", "500", "503", "400", "401", "hang", "malformed", "latency", "break", "overrun"}
    | {"oversize", "drip"}
)
OVERSIZE_BYTES = 2 * 1024 * 1024
DEFAULT_RETRY_AFTER_S = 1.0


class FaultSpecError(ValueError):
    """The fault description sent to ``POST /_sim/faults`` is invalid."""


@dataclass(slots=True)
class FaultRule:
    id: str
    kind: str
    provider: str | None = None
    model: str | None = None
    remaining: int | None = None  # None = until removed
    retry_after_s: float = DEFAULT_RETRY_AFTER_S
    latency_ms: float = 0.0
    after_chunks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "provider": self.provider,
            "model": self.model,
            "remaining": self.remaining,
            "retry_after_s": self.retry_after_s,
            "latency_ms": self.latency_ms,
            "after_chunks": self.after_chunks,
        }


def _opt_str(spec: dict[str, Any], key: str) -> str | None:
    value = spec.get(key)
    if value is not None and not isinstance(value, str):
        raise FaultSpecError(f"{key} must be a string or null")
    return value


def _opt_number(spec: dict[str, Any], key: str) -> float | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultSpecError(f"{key} must be a non-negative number or null")
    return float(value)


class FaultTable:
    """Ordered fault rules; the most recently added matching rule wins."""

    __slots__ = ("_ids", "_rules")

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._rules)

    def __contains__(self, rule: FaultRule) -> bool:
        """Whether this rule is still in place (not removed, not used up)."""
        return any(r is rule for r in self._rules)

    def add_spec(self, spec: Any) -> FaultRule:
        """Validate a JSON fault description and add it."""
        if not isinstance(spec, dict):
            raise FaultSpecError("body must be a JSON object")
        kind = spec.get("kind")
        if isinstance(kind, int) and not isinstance(kind, bool):
            kind = str(kind)
        if kind not in KINDS:
            raise FaultSpecError(f"kind must be one of {sorted(KINDS)}")
        count = spec.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise FaultSpecError("count must be an integer or null")
        if count is not None and count < 1:
            raise FaultSpecError("count must be >= 1")
        retry_after = _opt_number(spec, "retry_after_s")
        latency = _opt_number(spec, "latency_ms")
        if kind in ("latency", "drip") and latency is None:
            raise FaultSpecError(f"latency_ms is required for kind {kind!r}")
        after = spec.get("after_chunks")
        if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 0):
            raise FaultSpecError("after_chunks must be a non-negative integer or null")
        return self.add(
            kind,
            provider=_opt_str(spec, "provider"),
            model=_opt_str(spec, "model"),
            count=count,
            retry_after_s=DEFAULT_RETRY_AFTER_S if retry_after is None else retry_after,
            latency_ms=latency or 0.0,
            after_chunks=after or 0,
        )

    def add(
        self,
        kind: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        count: int | None = None,
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
        latency_ms: float = 0.0,
        after_chunks: int = 0,
    ) -> FaultRule:
        if kind not in KINDS:
            raise FaultSpecError(f"unknown fault kind {kind!r}")
        rule = FaultRule(
            id=f"f{next(self._ids)}",
            kind=kind,
            provider=provider,
            model=model,
            remaining=count,
            retry_after_s=retry_after_s,
            latency_ms=latency_ms,
            after_chunks=after_chunks,
        )
        self._rules.append(rule)
        return rule

    def match(self, provider: str, model: str) -> FaultRule | None:
        """Return the rule for this request, consuming one use of a counted rule."""
        rules = self._rules
        if not rules:
            return None
        for i in range(len(rules) - 1, -1, -1):
            rule = rules[i]
            if (rule.provider is None or rule.provider == provider) and (
                rule.model is None or rule.model == model
            ):
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        del rules[i]
                return rule
        return None

    def remove(self, rule_id: str) -> bool:
        for i, rule in enumerate(self._rules):
            if rule.id == rule_id:
                del self._rules[i]
                return True
        return False

    def clear(self) -> None:
        self._rules.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        """Rules in match order (newest first)."""
        return [r.to_dict() for r in reversed(self._rules)]

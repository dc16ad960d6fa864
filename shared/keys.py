"""Every Redis key, built in one place and prefixed by `SB_ENV`.

Each key family belongs to one service (named in its builder's comment); the others reach
it only through that service's NATS contract.
"""

from __future__ import annotations


def prefix(env: str) -> str:
    return f"sb:{env}:"


def idempotency(env: str, invocation_id: str) -> str:
    """gateway: the stored result (or an in-flight marker) of an invocation id."""
    return f"sb:{env}:idem:{invocation_id}"


def session_window(env: str, workflow: str, session_id: str) -> str:
    """budget: sorted set of settled and reserved token amounts in a session's rolling window."""
    return f"sb:{env}:budget:session:{{{workflow}:{session_id}}}:window"


def session_reservations(env: str, workflow: str, session_id: str) -> str:
    """budget: hash of in-flight reservations of a session, invocation id -> tokens."""
    return f"sb:{env}:budget:session:{{{workflow}:{session_id}}}:reserved"


def provider_blocks(env: str) -> str:
    """router: hash of operator-blocked providers, name -> reason."""
    return f"sb:{env}:router:blocked"


def cooldown(env: str, provider: str, model: str) -> str:
    """router: present while provider/model cools down after a 429 (TTL = Retry-After)."""
    return f"sb:{env}:router:cooldown:{provider}/{model}"


def circuit_failures(env: str, provider: str) -> str:
    """router: consecutive failed calls to a provider."""
    return f"sb:{env}:router:circuit:{provider}:failures"


def circuit_open(env: str, provider: str) -> str:
    """router: present while the provider's circuit is open (TTL = open time)."""
    return f"sb:{env}:router:circuit:{provider}:open"


def quota(env: str, scope: str) -> str:
    """router: this minute's request and token counts of a provider or provider/model."""
    return f"sb:{env}:router:quota:{scope}"

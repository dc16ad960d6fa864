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


LEDGER_PARTS = ("window", "reserved", "amounts", "totals", "holders")


def budget_session(env: str, workflow: str, session_id: str) -> tuple[str, ...]:
    """budget: the keys of a session's rolling token ledger (layout: services/budget/lua/ledger.lua).

    Every budget key of a workflow shares the hash tag `{workflow}`, so that one script may
    debit a session and the workflow's daily spend at once, on a cluster too.
    """
    return tuple(f"sb:{env}:budget:{{{workflow}}}:session:{session_id}:{part}" for part in LEDGER_PARTS)


def budget_agent_tokens(env: str, agent: str) -> tuple[str, ...]:
    """budget: the keys of an agent's rolling token ledger, across workflows.

    Its hash tag is the agent's, not the workflow's: a reservation spanning both needs the keys
    on one Redis node (a single server, or a cluster pinned by a proxy), see docs/security.md."""
    return tuple(f"sb:{env}:budget:{{agent:{agent}}}:tokens:{part}" for part in LEDGER_PARTS)


def budget_agent_spend(env: str, agent: str) -> tuple[str, ...]:
    """budget: the keys of an agent's spend ledger (micro-USD per UTC day), across workflows."""
    return tuple(f"sb:{env}:budget:{{agent:{agent}}}:spend:{part}" for part in LEDGER_PARTS)


def budget_spend(env: str, workflow: str) -> tuple[str, ...]:
    """budget: the keys of a workflow's spend ledger (micro-USD per UTC day)."""
    return tuple(f"sb:{env}:budget:{{{workflow}}}:spend:{part}" for part in LEDGER_PARTS)


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


def resume(env: str, review_id: str) -> str:
    """gateway: a decided review being acted on (in-flight marker), then its final result."""
    return f"sb:{env}:resume:{review_id}"

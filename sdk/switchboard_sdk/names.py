"""The NATS subjects an agent uses, built in one place (the services' `shared.names` adds theirs).

`SB_ENV` prefixes all of them so that staging and production (and every test) share a
NATS server without seeing each other's traffic. Nobody formats a subject inline.
"""

from __future__ import annotations

import re

ENV_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def check_env(env: str) -> str:
    """Refuse an environment name that cannot prefix subjects, streams and buckets."""
    if not ENV_PATTERN.match(env):
        raise ValueError(f"SB_ENV {env!r} must match {ENV_PATTERN.pattern}")
    return env


def invoke(env: str, workflow: str) -> str:
    return f"sb.{env}.invoke.{workflow}"


def agent_invoke(env: str, agent: str, workflow: str) -> str:
    """An agent's own invoke subject: NATS permissions let only that agent's user publish here,
    so the gateway takes the agent's identity from this token."""
    return f"sb.{env}.agent.{agent}.invoke.{workflow}"


def result(env: str, invocation_id: str) -> str:
    return f"sb.{env}.result.{invocation_id}"


def event(env: str, kind: str) -> str:
    return f"sb.{env}.events.{kind}"


def degradation(env: str) -> str:
    """Agents ask the router what their workflow does when the plane is unreachable."""
    return f"sb.{env}.degradation"


def hitl(env: str, op: str) -> str:
    """hitl requests: open, status, reviewers.add|revoke|list, queues, pending, queue_op, export."""
    return f"sb.{env}.hitl.{op}"

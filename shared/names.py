"""Every NATS subject, JetStream stream, KV bucket and consumer name, built in one place.

`SB_ENV` prefixes all of them so that staging and production (and every test) share a
NATS server without seeing each other's traffic. Nobody formats a subject inline. The subjects
an agent uses (invoke, result, events, degradation, hitl) are defined in the SDK
(`switchboard_sdk.names`) and re-exported here with the services' own.
"""

from __future__ import annotations

import re

from switchboard_sdk.names import (  # noqa: F401  (re-exported: every subject from one module)
    ENV_PATTERN,
    agent_invoke,
    check_env,
    degradation,
    event,
    hitl,
    invoke,
    result,
)

WORKFLOW_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

# Internal request/reply services (queue groups carry the service name).
ROUTER_QUEUE = "router"
BUDGET_QUEUE = "budget"
GATEWAY_QUEUE = "gateway"
RECORDER_QUEUE = "recorder"
HITL_QUEUE = "hitl"

CONFIG_KEY = "policy"
RECORDER_DURABLE = "recorder"


def invoke_wildcard(env: str) -> str:
    return f"sb.{env}.invoke.*"


def agent_invoke_wildcard(env: str) -> str:
    return f"sb.{env}.agent.*.invoke.*"


def agent_of(subject: str) -> str | None:
    """The agent token of an agent invoke subject, None for the plain invoke subject."""
    parts = subject.split(".")
    return parts[3] if len(parts) == 6 and parts[2] == "agent" and parts[4] == "invoke" else None


def events_wildcard(env: str) -> str:
    return f"sb.{env}.events.>"


def router_outcome(env: str) -> str:
    return f"sb.{env}.router.outcome"


def router_status(env: str) -> str:
    return f"sb.{env}.router.status"


def router_block(env: str) -> str:
    return f"sb.{env}.router.block"


def recorder_count(env: str) -> str:
    return f"sb.{env}.recorder.count"


def recorder_dead_letters(env: str) -> str:
    return f"sb.{env}.recorder.dead-letters"


def budget_reserve(env: str) -> str:
    return f"sb.{env}.budget.reserve"


def budget_settle(env: str) -> str:
    return f"sb.{env}.budget.settle"


def budget_extend(env: str) -> str:
    return f"sb.{env}.budget.extend"


def budget_show(env: str) -> str:
    return f"sb.{env}.budget.show"


def recorder_trace(env: str) -> str:
    return f"sb.{env}.recorder.trace"


def recorder_stats(env: str) -> str:
    return f"sb.{env}.recorder.stats"


def recorder_invocations(env: str) -> str:
    return f"sb.{env}.recorder.invocations"


def events_stream(env: str) -> str:
    return f"sb_{env}_events".replace("-", "_")


def config_bucket(env: str) -> str:
    return f"sb_{env}_config".replace("-", "_")


def service_api(verb: str, service: str | None = None, service_id: str | None = None) -> str:
    """The NATS service API's subjects (not env-scoped: answers carry `env` in their metadata):
    `$SRV.<verb>` asks every service, then narrower by name and by replica id."""
    return ".".join(["$SRV", verb, *(part for part in (service, service_id) if part)])


SWITCHES_KEY = "pauses"


def switches_bucket(env: str) -> str:
    """The KV bucket of an environment's stop switches (paused workflows and agents)."""
    return f"sb_{env}_switches".replace("-", "_")


def rollout_bucket(env: str) -> str:
    """The KV bucket where every replica reports the policy version it runs or rejected."""
    return f"sb_{env}_rollout".replace("-", "_")


def gateway_resume(env: str) -> str:
    """hitl -> gateway: act on a decided review (queue group `gateway`)."""
    return f"sb.{env}.gateway.resume"


def gateway_probe(env: str) -> str:
    """operator -> gateway: a few probe calls to one provider (queue group `gateway`)."""
    return f"sb.{env}.gateway.probe"


INGRESS_QUEUE = "ingress"


def ingress(env: str, op: str) -> str:
    """ingress requests from sbctl: keys.add, keys.list, keys.revoke."""
    return f"sb.{env}.ingress.{op}"

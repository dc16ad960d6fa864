"""Every subject in shared/names.py (the SDK's switchboard_sdk/names.py included) has a role that
may publish it and a role that may subscribe to it in deploy/nats/roles.yaml: a new subject
without a place in the table fails here, not in a deployment with authentication on."""

from __future__ import annotations

import importlib.util
import inspect

import yaml

from shared import names
from switchboard_sdk import names as sdk_names
from tests.support.nats_server import GENERATE

# Subjects read through JetStream (a stream consumer), not by a core subscription.
STREAM_ONLY = {"event", "events_wildcard"}


def generated_users() -> list[dict]:
    spec = importlib.util.spec_from_file_location("nats_generate", GENERATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = yaml.safe_load((GENERATE.parent / "roles.yaml").read_text())
    return module.users(table, "prod", ["alice"])


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, `>` one or more at the end."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def subjects() -> dict[str, str]:
    """Each subject builder of shared.names (and of the SDK's names it re-exports), called with
    sample arguments (wildcards made concrete)."""
    out = {}
    for name, fn in inspect.getmembers(names, inspect.isfunction):
        if fn.__module__ not in (names.__name__, sdk_names.__name__) or name in (
            "check_env",
            "agent_of",
            "service_api",
        ):
            continue
        params = inspect.signature(fn).parameters
        value = fn(**{p: "prod" if p == "env" else "alice" if p == "agent" else "x1" for p in params})
        if value.startswith("sb."):
            value = value.replace(".agent.*.", ".agent.alice.")  # the sample agent has a user
            out[name] = value.replace(".*", ".x1").replace(".>", ".x1")
    return out


def test_every_subject_has_a_publisher_and_a_subscriber_role():
    users = generated_users()
    found = subjects()
    assert {"invoke", "agent_invoke", "budget_settle", "router_block", "event"} <= set(found)
    missing = []
    for name, subject in sorted(found.items()):
        publishers = [u["user"] for u in users if any(matches(p, subject) for p in u["publish"])]
        subscribers = [u["user"] for u in users if any(matches(p, subject) for p in u["subscribe"])]
        if not publishers:
            missing.append(f"{name} ({subject}): nobody may publish it")
        if not subscribers and name not in STREAM_ONLY:
            missing.append(f"{name} ({subject}): nobody may subscribe to it")
    assert missing == [], "add these to deploy/nats/roles.yaml:\n" + "\n".join(missing)


def test_the_matcher_follows_nats_rules():
    assert matches("sb.prod.agent.*.invoke.*", "sb.prod.agent.alice.invoke.wf")
    assert not matches("sb.prod.agent.*.invoke.*", "sb.prod.agent.alice.invoke")
    assert matches("sb.prod.router.>", "sb.prod.router.status")
    assert not matches("sb.prod.router.>", "sb.prod.router")
    assert not matches("sb.prod.invoke.*", "sb.staging.invoke.wf")

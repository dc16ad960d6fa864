"""NATS roles from deploy/nats/roles.yaml, on a nats-server of this test's own: for every role,
each forbidden action is refused by the server and each needed action is allowed.

A probe publishes (or subscribes) as a role's user, then publishes on a subject nobody may use
(the sentinel). The server handles one connection's messages in order, so the sentinel's
refusal arriving without a refusal of the probe before it proves the probe was allowed; a
refusal of the probe proves it was denied. No sleeping, no waiting for silence.
"""

from __future__ import annotations

import asyncio

import nats
import pytest

from shared import names
from switchboard_sdk import nats_auth
from tests.support.nats_server import AuthNats

ENV = "prod"
AGENTS = ["alice", "bob"]
SENTINEL = "sb.sentinel.nobody"
B = names.config_bucket(ENV)
S = names.events_stream(ENV)
SW = names.switches_bucket(ENV)
RO = names.rollout_bucket(ENV)


def sb(rest: str) -> str:
    return f"sb.{ENV}.{rest}"


ALLOW, DENY = "allow", "deny"
PUB, SUB = "pub", "sub"

# (user, allow/deny, pub/sub, subject): what each role must and must not be able to do.
PROBES = [
    # agent: invoke only as itself; nothing else
    ("agent-alice", ALLOW, PUB, sb("agent.alice.invoke.support-triage")),
    ("agent-alice", ALLOW, SUB, "_INBOX.agent-alice.x"),
    ("agent-alice", ALLOW, PUB, sb("degradation")),  # learn its workflow's degradation mode
    ("agent-alice", ALLOW, PUB, sb("events.passthrough")),  # upload its own passthrough record
    ("agent-alice", DENY, PUB, sb("agent.bob.invoke.support-triage")),  # invoke as another agent
    ("agent-alice", DENY, PUB, sb("invoke.support-triage")),  # the operators' (label) subject
    ("agent-alice", DENY, PUB, sb("budget.settle")),  # settle (release a reservation)
    ("agent-alice", DENY, PUB, sb("budget.reserve")),
    ("agent-alice", DENY, PUB, sb("budget.extend")),  # keep another's reservation held
    ("agent-alice", DENY, PUB, f"$KV.{B}.policy"),  # write the policy bucket
    ("agent-alice", DENY, PUB, f"$JS.API.STREAM.DELETE.KV_{B}"),
    ("agent-alice", DENY, PUB, sb("events.invocation")),  # publish (forge) an event
    ("agent-alice", DENY, PUB, sb("router.block")),  # block a provider
    ("agent-alice", DENY, PUB, sb("router.outcome")),  # forge an outcome (a cooldown)
    ("agent-alice", DENY, SUB, "_INBOX.>"),  # read others' replies
    ("agent-alice", DENY, SUB, "_INBOX.agent-bob.>"),
    ("agent-alice", DENY, SUB, sb("agent.*.invoke.*")),  # read others' prompts
    ("agent-alice", DENY, SUB, sb("events.>")),
    ("agent-alice", DENY, SUB, "$SRV.>"),  # answer service-API pings as if it were a service
    ("agent-alice", DENY, PUB, sb("router.degradation")),
    ("agent-alice", DENY, PUB, f"$KV.{SW}.pauses"),  # resume itself or pause others
    ("agent-alice", DENY, PUB, f"$KV.{RO}.gateway.x"),  # forge a rollout acknowledgement
    # stop switches and rollout reports
    ("operator", ALLOW, PUB, f"$KV.{SW}.pauses"),
    ("operator", ALLOW, PUB, sb("events.lever")),
    ("gateway", ALLOW, PUB, f"$JS.API.CONSUMER.CREATE.KV_{SW}"),  # watch the switches
    ("gateway", DENY, PUB, f"$KV.{SW}.pauses"),  # read, never write
    ("router", ALLOW, PUB, f"$KV.{RO}.router.x"),  # its report
    ("router", DENY, PUB, f"$KV.{SW}.pauses"),
    ("agent-alice", ALLOW, PUB, sb("hitl.status")),  # its held invocation's state
    ("agent-alice", ALLOW, SUB, sb("result.inv-1")),
    ("agent-alice", DENY, PUB, sb("hitl.open")),  # open or decide reviews
    ("agent-alice", DENY, PUB, sb("hitl.reviewers.add")),
    ("agent-alice", DENY, PUB, sb("gateway.resume")),
    # gateway: the only asker of the budget, tells the router outcomes; serves both invoke subjects
    ("gateway", ALLOW, SUB, sb("invoke.*")),
    ("gateway", ALLOW, SUB, sb("agent.*.invoke.*")),
    ("gateway", ALLOW, PUB, sb("router.outcome")),
    ("gateway", DENY, PUB, sb("router.status")),  # plans from Redis: asks the router nothing
    ("gateway", ALLOW, PUB, sb("budget.reserve")),
    ("gateway", ALLOW, PUB, sb("hitl.open")),
    ("gateway", DENY, PUB, sb("result.inv-1")),  # the hitl service publishes it, once recorded
    ("gateway", ALLOW, SUB, sb("gateway.resume")),
    ("gateway", ALLOW, PUB, sb("budget.settle")),
    ("gateway", ALLOW, PUB, sb("budget.extend")),
    ("gateway", ALLOW, PUB, sb("events.invocation")),
    ("gateway", DENY, PUB, f"$KV.{B}.policy"),
    ("gateway", DENY, PUB, sb("router.block")),
    ("gateway", DENY, PUB, sb("invoke.support-triage")),
    ("gateway", DENY, SUB, "_INBOX.>"),
    ("gateway", ALLOW, PUB, "_INBOX.agent-alice.x"),  # the chunks of a streamed answer
    # router
    ("router", ALLOW, SUB, sb("router.outcome")),
    ("router", ALLOW, SUB, sb("degradation")),
    ("router", ALLOW, SUB, "$SRV.PING.switchboard-router"),
    ("router", ALLOW, PUB, sb("events.rate_limit")),
    ("router", DENY, PUB, sb("budget.settle")),
    ("router", DENY, PUB, sb("budget.extend")),
    ("router", DENY, PUB, f"$KV.{B}.policy"),
    ("router", DENY, SUB, sb("invoke.*")),
    ("router", DENY, SUB, sb("budget.>")),
    # budget
    ("budget", ALLOW, SUB, sb("budget.reserve")),
    ("budget", ALLOW, SUB, sb("budget.extend")),
    ("budget", ALLOW, PUB, sb("events.budget_breach")),
    ("budget", DENY, PUB, sb("router.block")),
    ("budget", DENY, PUB, f"$KV.{B}.policy"),
    ("budget", DENY, SUB, sb("invoke.*")),
    # recorder
    ("recorder", ALLOW, SUB, sb("recorder.trace")),
    ("recorder", ALLOW, PUB, f"$JS.API.CONSUMER.MSG.NEXT.{S}.recorder"),
    ("recorder", ALLOW, PUB, f"$JS.ACK.{S}.recorder.1.1.1.1.1"),
    ("recorder", ALLOW, PUB, f"$JS.API.STREAM.MSG.GET.{S}"),  # the audit lag reads the oldest event
    ("recorder", ALLOW, SUB, sb("recorder.stats")),
    ("recorder", ALLOW, SUB, sb("recorder.invocations")),
    ("recorder", DENY, PUB, sb("budget.settle")),
    ("recorder", DENY, PUB, f"$KV.{B}.policy"),
    ("recorder", DENY, PUB, f"$JS.API.STREAM.DELETE.{S}"),
    ("recorder", DENY, SUB, sb("invoke.*")),
    # hitl
    ("hitl", ALLOW, PUB, sb("gateway.resume")),  # hand a decided review to a gateway
    ("hitl", ALLOW, SUB, sb("hitl.open")),
    ("hitl", ALLOW, SUB, sb("hitl.reviewers.add")),
    ("hitl", ALLOW, PUB, sb("result.inv-1")),  # a decided review's result, once recorded
    ("hitl", DENY, PUB, sb("budget.settle")),
    ("hitl", DENY, PUB, f"$KV.{B}.policy"),
    ("hitl", DENY, PUB, sb("invoke.support-triage")),
    # ingress: invokes as the agent of the caller's API key; serves the key requests
    ("ingress", ALLOW, PUB, sb("agent.alice.invoke.support-triage")),
    ("ingress", ALLOW, SUB, sb("ingress.keys.add")),
    ("ingress", ALLOW, PUB, sb("events.lever")),
    ("ingress", DENY, PUB, sb("invoke.support-triage")),  # the operators' label subject
    ("ingress", DENY, PUB, sb("budget.settle")),
    ("ingress", DENY, PUB, sb("router.block")),
    ("ingress", DENY, PUB, f"$KV.{B}.policy"),
    ("ingress", DENY, SUB, sb("agent.*.invoke.*")),  # read agents' prompts
    ("ingress", DENY, SUB, "_INBOX.>"),
    ("operator", ALLOW, PUB, sb("ingress.keys.revoke")),
    ("agent-alice", DENY, PUB, sb("ingress.keys.add")),  # issue itself a key
    # operator (sbctl): policy, levers, the label invoke subject; never an agent, a settle or an event
    ("operator", ALLOW, PUB, f"$KV.{B}.policy"),
    ("operator", ALLOW, PUB, sb("router.block")),
    ("operator", ALLOW, PUB, sb("budget.show")),
    ("operator", ALLOW, PUB, sb("recorder.stats")),  # sbctl stats
    ("operator", ALLOW, PUB, sb("recorder.invocations")),  # sbctl invocations
    ("operator", ALLOW, PUB, "$SRV.PING"),  # sbctl status
    ("operator", ALLOW, PUB, sb("invoke.support-triage")),
    ("operator", ALLOW, PUB, sb("events.config")),  # the record of a policy change it made
    ("operator", DENY, PUB, sb("agent.alice.invoke.support-triage")),
    ("operator", DENY, PUB, sb("budget.settle")),
    ("operator", DENY, PUB, sb("budget.reserve")),
    ("operator", DENY, PUB, sb("events.invocation")),
    ("operator", DENY, SUB, sb("invoke.*")),
    # another environment is out of reach of a deployment generated for this one
    ("agent-alice", DENY, PUB, "sb.staging.agent.alice.invoke.support-triage"),
    ("gateway", DENY, SUB, "sb.staging.invoke.*"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    nats_server = AuthNats(tmp_path_factory.mktemp("nats-roles"), AGENTS, env=ENV).start()
    yield nats_server
    nats_server.stop()


async def _connect(server: AuthNats, user: str, refusals: asyncio.Queue):
    async def on_error(exc: Exception) -> None:
        await refusals.put(str(exc))

    return await nats.connect(
        server.url,
        user=user,
        password=server.password(user),
        inbox_prefix=nats_auth.inbox_prefix(user),
        error_cb=on_error,
        allow_reconnect=False,
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("user", "verdict", "action", "subject"), PROBES, ids=lambda v: str(v))
async def test_role_permission(server, user, verdict, action, subject):
    refusals: asyncio.Queue = asyncio.Queue()
    nc = await _connect(server, user, refusals)
    try:
        if action == PUB:
            await nc.publish(subject, b"{}")
        else:
            await nc.subscribe(subject)
        await nc.publish(SENTINEL, b"")
        await nc.flush()
        first = await asyncio.wait_for(refusals.get(), timeout=10)
    finally:
        await nc.close()
    first = first.lower()  # nats-py lower-cases the server's message
    refused_probe = f'"{subject.lower()}"' in first and SENTINEL not in first
    kind = "publish to" if action == PUB else "subscription to"
    if verdict == DENY:
        assert refused_probe and kind in first, f"{user} {action} {subject} was not refused: {first}"
    else:
        assert SENTINEL in first, f"{user} {action} {subject} was refused: {first}"


async def test_wrong_password_is_refused(server):
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(server.url, user="agent-alice", password="not-it", allow_reconnect=False)

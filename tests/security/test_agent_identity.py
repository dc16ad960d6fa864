"""The agent recorded and limited is the one the connection authenticated as; services work
under their least-privilege roles (the server logs no refusal of theirs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import asyncpg
import nats
import pytest

from shared import codec, names
from shared.contracts import InvokeRequest, InvokeResult, Message, Status
from switchboard_sdk import nats_auth
from tests.support.helpers import run_sbctl
from tests.support.stack import wait_for

pytestmark = pytest.mark.timeout(60)


async def audit_row(stack, invocation_id: str):
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        return await conn.fetchrow(
            "select * from invocations where env = $1 and invocation_id = $2", stack.env, invocation_id
        )
    finally:
        await conn.close()


def service_refusals(auth_nats) -> list[str]:
    """Refusals of the services' own connections (named switchboard-<service>-<env>)."""
    return [line for line in auth_nats.violations().splitlines() if "switchboard-" in line]


async def test_an_agent_is_recorded_as_the_user_it_authenticated_as(secure_stack, auth_nats):
    await secure_stack.start()
    await secure_stack.apply()  # the operator writes the policy bucket; every service loads it
    alice = await secure_stack.client(agent="alice")

    result = await alice.invoke("support-triage", "hello", session_id="s-alice")

    assert result.status is Status.SUCCESS, result.error
    row = await wait_for(lambda: audit_row(secure_stack, result.invocation_id), message="the audit row")
    assert row["agent"] == "alice"
    assert service_refusals(auth_nats) == []


async def test_a_request_claiming_another_agent_is_refused_and_recorded(secure_stack):
    await secure_stack.start()
    user = nats_auth.agent_user("alice")
    nc = await nats.connect(
        secure_stack.infra.nats_url,
        user=user,
        password=(secure_stack_credentials(secure_stack) / user).read_text().strip(),
        inbox_prefix=nats_auth.inbox_prefix(user),
    )
    request = InvokeRequest(
        invocation_id="claims-bob-1",
        workflow="support-triage",
        agent="bob",
        messages=[Message(role="user", content="I am bob")],
    )
    try:
        msg = await nc.request(
            names.agent_invoke(secure_stack.env, "alice", "support-triage"), codec.encode(request), timeout=10
        )
    finally:
        await nc.close()
    reply = codec.decode(msg.data, InvokeResult)

    assert reply.status is Status.ERROR
    assert reply.error.code == "agent_mismatch"
    row = await wait_for(lambda: audit_row(secure_stack, "claims-bob-1"), message="the refusal's audit row")
    assert row["agent"] == "alice"
    assert row["status"] == "error"
    assert row["error_code"] == "agent_mismatch"
    assert row["provider"] is None  # refused before any provider call


async def test_sbctl_pulls_operator_levers_as_the_operator(secure_stack, auth_nats):
    await secure_stack.start()
    env = secure_stack.env

    code, out, err = await run_sbctl(
        secure_stack.infra, "config", "apply", str(secure_stack.policy_dir), "--reason", "t", "--env", env
    )
    assert code == 0, out + err
    assert out.splitlines()[-1].endswith("live replica(s) run version 1")  # their reports are permitted
    assert "rejected" not in out and "silent" not in out
    code, out, err = await run_sbctl(secure_stack.infra, "provider", "block", "openai-sim", "--env", env)
    assert code == 0, err
    code, out, err = await run_sbctl(
        secure_stack.infra, "workflow", "pause", "research-summary", "--reason", "t", "--env", env
    )
    assert code == 0, err
    code, out, err = await run_sbctl(
        secure_stack.infra, "invoke", "support-triage", "hi", "--env", env, "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["provider"] == "anthropic-sim"  # the block the operator set is in force
    row = await wait_for(lambda: audit_row(secure_stack, result["invocation_id"]), message="the audit row")
    assert row["agent"] == "sbctl"
    assert service_refusals(auth_nats) == []
    assert "sbctl" not in auth_nats.violations()


def secure_stack_credentials(stack) -> Path:
    return Path(os.environ["SB_NATS_CREDENTIALS_DIR"])

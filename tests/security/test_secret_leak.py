"""No credential in any output: a workload with known fake provider keys and NATS passwords,
including providers that echo the key they refuse, then a search of every log record, event,
audit row, metric, reply, /healthz body and sbctl output for them."""

from __future__ import annotations

import json
import logging
import uuid

import asyncpg
import pytest
from prometheus_client import REGISTRY, generate_latest

from shared.contracts import Status
from shared.telemetry.logs import JsonFormatter
from tests.support.helpers import healthz, run_sbctl
from tests.support.stack import wait_for

pytestmark = pytest.mark.timeout(90)


async def audit_dump(stack) -> str:
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        events = await conn.fetch("select body::text from events where env = $1", stack.env)
        rows = await conn.fetch("select row_to_json(i)::text from invocations i where env = $1", stack.env)
    finally:
        await conn.close()
    return "\n".join([r[0] for r in events] + [r[0] for r in rows])


async def test_no_credential_appears_anywhere(secure_stack, auth_nats, monkeypatch, caplog):
    canary = uuid.uuid4().hex
    keys = {
        "SB_OPENAI_SIM_API_KEY": f"sk-canary-openai-{canary}",
        "SB_ANTHROPIC_SIM_API_KEY": f"sk-ant-canary-{canary}",
    }
    for name, value in keys.items():
        monkeypatch.setenv(name, value)
    secrets = [*keys.values(), *(auth_nats.password(u) for u in ("gateway", "operator", "agent-alice"))]
    caplog.set_level(logging.DEBUG)
    stack = secure_stack
    await stack.start()
    sim = stack.sim.control
    alice = await stack.client(agent="alice")

    replies = [await alice.invoke("support-triage", "hello", session_id="leak")]
    await sim.add_fault("401", provider="openai-sim", count=1)  # refuses and echoes the openai key
    replies.append(await alice.invoke("support-triage", "key refused"))
    await sim.add_fault("500", provider="openai-sim", count=1)  # falls back to anthropic, which
    await sim.add_fault("401", provider="anthropic-sim", count=1)  # refuses and echoes its key
    replies.append(await alice.invoke("support-triage", "server error, then key refused"))
    replies.append(await alice.invoke("support-triage", "too long", max_tokens=900_000))

    assert [r.status for r in replies] == [Status.SUCCESS, Status.ERROR, Status.ERROR, Status.BUDGET_EXCEEDED]
    echoed = [a.reason or "" for r in replies for a in r.attempts if a.status_code == 401]
    assert len(echoed) == 2 and all("Incorrect API key provided: ***" in text for text in echoed), echoed
    ids = [r.invocation_id for r in replies]

    async def all_recorded():
        dump = await audit_dump(stack)
        return dump if all(i in dump for i in ids) else None

    audit = await wait_for(all_recorded, timeout=30, message="every invocation in the audit log")
    sbctl_out = []
    for args in (
        ("trace", ids[1], "--json"),
        ("trace", ids[2], "--json"),
        ("trace", ids[2]),
        ("provider", "status", "--json"),
        ("config", "show", "--json"),
        ("budget", "show", "--workflow", "support-triage", "--session", "leak", "--json"),
    ):
        code, out, err = await run_sbctl(stack.infra, *args, "--env", stack.env)
        sbctl_out.append(f"{args}: {code}\n{out}\n{err}")
    formatter = JsonFormatter("test", stack.env)
    outputs = {
        "logs": "\n".join(formatter.format(r) for r in caplog.records),
        "events and audit rows": audit,
        "metrics": generate_latest(REGISTRY).decode(),
        "replies": "\n".join(r.model_dump_json() for r in replies),
        "healthz": json.dumps([await healthz(s) for s in stack.services.values()]),
        "sbctl": "\n".join(sbctl_out),
    }

    assert len(outputs["logs"]) > 1000 and "invocation" in outputs["logs"]  # the search had material
    needles = [*secrets, canary]  # the keys whole, and their unique part on its own
    found = {where: [n[:6] + "…" for n in needles if n in text] for where, text in outputs.items()}
    assert found == {where: [] for where in outputs}

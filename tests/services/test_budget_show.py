"""`sbctl budget show`, as a process, against the running budget service."""

from __future__ import annotations

import orjson

from shared.contracts import Status
from tests.support.helpers import run_sbctl
from tests.support.stack import wait_for

WF = "support-triage"


async def sbctl_show(stack, *args: str) -> tuple[int, str, str]:
    return await run_sbctl(stack.infra, "budget", "show", "--workflow", WF, "--env", stack.env, *args)


async def test_show_reports_ceilings_window_usage_and_spend_today(running):
    client = await running.client()
    result = await client.invoke(WF, "hi", session_id="s-1", max_tokens=100)
    assert result.status is Status.SUCCESS
    used = result.usage.prompt_tokens + result.usage.completion_tokens

    async def settled() -> dict | None:
        code, out, err = await sbctl_show(running, "--session", "s-1", "--json")
        assert code == 0, err
        reply = orjson.loads(out)
        return reply if reply["session"]["used"] and not reply["session"]["in_flight"] else None

    reply = await wait_for(settled, message="the settle to show")
    assert reply["budget"]["max_tokens_per_invocation"] == 4000
    assert reply["session"] == {
        "unit": "tokens",
        "limit": 100_000,
        "used": used,
        "reserved": 0,
        "remaining": 100_000 - used,
        "in_flight": 0,
        "window_s": 3600,
    }
    assert reply["spend_today"]["unit"] == "usd" and reply["spend_today"]["limit"] == 200
    assert 0 < reply["spend_today"]["used"] < 0.01

    code, out, _ = await sbctl_show(running, "--session", "s-1")
    assert code == 0
    assert f"  session s-1     {used} tokens used + 0 tokens reserved (0 in flight) of 100,000" in out
    assert "of $200 per UTC day" in out


async def test_show_of_an_unknown_workflow_is_an_error(running):
    code, out, _ = await run_sbctl(
        running.infra, "budget", "show", "--workflow", "nope", "--env", running.env, "--json"
    )
    assert code == 1
    assert orjson.loads(out)["error"]["code"] == "unknown_workflow"

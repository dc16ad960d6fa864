"""The SDK when the control plane is unreachable: a NATS server this test started, really
stopped. passthrough workflows call the provider directly and upload their records once the
plane is back (once each, marked unenforced); fail_closed workflows raise at once."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import replace

import asyncpg
import orjson
import pytest

from shared.contracts import Degradation, Status
from switchboard_sdk import Client
from switchboard_sdk.errors import ControlPlaneUnavailable
from tests.support.servers import NatsServer
from tests.support.stack import Stack, wait_for

PASSTHROUGH = "research-summary"  # degradation: passthrough in config/
FAIL_CLOSED = "support-triage"  # degradation: fail_closed in config/


@pytest.fixture
async def own_nats(tmp_path):
    server = await NatsServer(tmp_path).start()
    yield server
    await server.stop(signal.SIGKILL)


@pytest.fixture
async def plane(infra, env_name, simulator, tmp_path, own_nats):
    """Every service of an isolated environment, on a NATS server this test owns."""
    from tests.support.stack import copy_policy

    s = Stack(replace(infra, nats_url=own_nats.url), env_name, copy_policy(tmp_path), simulator)
    await s.start()
    yield s
    if own_nats.proc is None:  # cleanup needs the test's NATS up
        await own_nats.start()
    await s.close()


async def _passthrough_rows(stack, invocation_ids: list[str]) -> list[dict]:
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        rows = await conn.fetch(
            "select body from events where env = $1 and kind = 'passthrough'"
            " and invocation_id = any($2::text[])",
            stack.env,
            invocation_ids,
        )
    finally:
        await conn.close()
    return [orjson.loads(r["body"]) for r in rows]


async def _provider_calls(stack) -> int:
    return (await stack.sim.control.stats())["total"]


async def _learned(sb: Client, *workflows: str) -> None:
    for workflow in workflows:
        await sb.invoke(workflow, "hello while connected", session_id="s-learn")
    await wait_for(lambda: all(sb.degradation(w) for w in workflows), message="modes learned")


async def test_passthrough_calls_the_provider_while_nats_is_down_and_uploads_once_when_back(
    plane, own_nats, tmp_path
):
    state = tmp_path / "agent-state"
    async with Client(own_nats.url, env=plane.env, agent="pt-agent", state_dir=state) as sb:
        await _learned(sb, PASSTHROUGH, FAIL_CLOSED)
        assert sb.degradation(PASSTHROUGH).mode is Degradation.PASSTHROUGH
        assert sb.degradation(FAIL_CLOSED).mode is Degradation.FAIL_CLOSED

        await own_nats.stop(signal.SIGKILL)
        await wait_for(lambda: not sb.connected, message="the SDK to see NATS gone")
        before = await _provider_calls(plane)

        ids = [f"pt-{i}" for i in range(3)]
        results = [
            await sb.invoke(PASSTHROUGH, f"summarise {i}", session_id="s-pt", invocation_id=ids[i])
            for i in range(3)
        ]

        assert [r.status for r in results] == [Status.SUCCESS] * 3
        assert all(r.enforced is False for r in results)
        assert {r.provider for r in results} == {"anthropic-sim"}  # the workflow's first tier
        assert all(r.output.startswith("[anthropic-sim/claude-sim-sonnet] ") for r in results)
        assert await _provider_calls(plane) == before + 3
        assert sb.pending_records() == 3

        started = time.monotonic()
        with pytest.raises(ControlPlaneUnavailable) as caught:
            await sb.invoke(FAIL_CLOSED, "must not pass", session_id="s-fc")
        # at once: not after the 5 s connect timeout (the services share this loop: leave them room)
        assert time.monotonic() - started < 2.0
        assert caught.value.code == "control_plane_unavailable"
        assert caught.value.details == [{"workflow": FAIL_CLOSED, "degradation": "fail_closed"}]
        assert await _provider_calls(plane) == before + 3
        assert await _passthrough_rows(plane, ids) == []  # nothing reached the audit log yet

        await own_nats.start()  # same port, same JetStream store
        await wait_for(lambda: sb.pending_records() == 0, timeout=30, message="records uploaded")
        rows = await wait_for(
            lambda: _rows_if(plane, ids, 3), timeout=30, message="passthrough rows in the audit log"
        )

    assert sorted(r["invocation_id"] for r in rows) == ids
    for row in rows:
        assert row["enforced"] is False
        assert row["kind"] == "passthrough"
        assert row["agent"] == "pt-agent"
        assert row["workflow"] == PASSTHROUGH
        assert row["provider"] == "anthropic-sim"
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
        assert row["reason"].startswith("cannot reach NATS")


async def _rows_if(stack, ids, n):
    rows = await _passthrough_rows(stack, ids)
    return rows if len(rows) >= n else None


async def test_a_record_uploaded_twice_is_in_the_audit_log_once(plane, own_nats, tmp_path):
    state = tmp_path / "agent-state"
    async with Client(own_nats.url, env=plane.env, agent="twice", state_dir=state) as sb:
        await _learned(sb, PASSTHROUGH)
        await own_nats.stop(signal.SIGKILL)
        await wait_for(lambda: not sb.connected, message="the SDK to see NATS gone")
        await sb.invoke(PASSTHROUGH, "once", invocation_id="twice-1")
        [record] = sb._journal.pending()
        kept = record.read_bytes()

        await own_nats.start()
        await wait_for(lambda: sb.pending_records() == 0, timeout=30, message="record uploaded")
        record.write_bytes(kept)  # as if the agent died between JetStream's ack and the delete
        assert await sb.upload_pending() == 1
        assert await sb.upload_pending() == 0
        await wait_for(lambda: _rows_if(plane, ["twice-1"], 1), timeout=30, message="the row")
        await asyncio.sleep(0.5)  # let the recorder write anything else it has (it must have nothing)

    assert len(await _passthrough_rows(plane, ["twice-1"])) == 1


async def test_an_agent_started_during_the_outage_uses_the_modes_it_kept_on_disk(plane, own_nats, tmp_path):
    state = tmp_path / "agent-state"
    async with Client(own_nats.url, env=plane.env, state_dir=state) as sb:
        await _learned(sb, PASSTHROUGH, FAIL_CLOSED)
    await own_nats.stop(signal.SIGKILL)

    async with Client(own_nats.url, env=plane.env, state_dir=state, connect_timeout=0.5) as fresh:
        assert not fresh.connected
        result = await fresh.invoke(PASSTHROUGH, "fresh agent", invocation_id="fresh-1")
        with pytest.raises(ControlPlaneUnavailable):
            await fresh.invoke(FAIL_CLOSED, "fresh agent")
        assert result.status is Status.SUCCESS and result.enforced is False

        await own_nats.start()
        await wait_for(lambda: fresh.pending_records() == 0, timeout=30, message="the fresh agent's upload")
    assert len(await wait_for(lambda: _rows_if(plane, ["fresh-1"], 1), timeout=30)) == 1


async def test_a_workflow_never_learned_fails_closed(tmp_path):
    async with Client("nats://127.0.0.1:1", env="dev", state_dir=tmp_path, connect_timeout=0.5) as sb:
        with pytest.raises(ControlPlaneUnavailable) as caught:
            await sb.invoke(PASSTHROUGH, "unknown mode")
    assert "no known degradation mode" in caught.value.message


async def test_passthrough_walks_the_tiers_when_a_provider_fails(plane, own_nats, tmp_path):
    async with Client(own_nats.url, env=plane.env, state_dir=tmp_path / "agent-state") as sb:
        await _learned(sb, PASSTHROUGH)
        await own_nats.stop(signal.SIGKILL)
        await wait_for(lambda: not sb.connected, message="the SDK to see NATS gone")
        await plane.sim.control.add_fault("500", provider="anthropic-sim")

        result = await sb.invoke(PASSTHROUGH, "primary is down", invocation_id="pt-fallback")
        await plane.sim.control.add_fault("500")  # now every provider
        failed = await sb.invoke(PASSTHROUGH, "all down", invocation_id="pt-all-down")

        assert result.status is Status.FALLBACK and result.enforced is False
        assert [(a.provider, a.outcome.value, a.status_code) for a in result.attempts] == [
            ("anthropic-sim", "server_error", 500),
            ("openai-sim", "ok", None),
        ]
        assert failed.status is Status.ERROR and failed.error.code == "all_tiers_failed"
        assert [a.outcome.value for a in failed.attempts] == ["server_error"] * 3
        await own_nats.start()
        await wait_for(lambda: sb.pending_records() == 0, timeout=30, message="records uploaded")
    rows = await wait_for(lambda: _rows_if(plane, ["pt-fallback", "pt-all-down"], 2), timeout=30)
    assert sorted(r["status"] for r in rows) == ["error", "fallback"]


async def test_no_gateway_with_nats_up_passes_through_and_uploads_at_once(plane, own_nats, tmp_path):
    async with Client(own_nats.url, env=plane.env, state_dir=tmp_path / "agent-state") as sb:
        await _learned(sb, PASSTHROUGH, FAIL_CLOSED)
        await plane.stop("gateway")
        before = await _provider_calls(plane)

        result = await sb.invoke(PASSTHROUGH, "no gateway", invocation_id="pt-no-gateway")
        with pytest.raises(ControlPlaneUnavailable):
            await sb.invoke(FAIL_CLOSED, "no gateway")

        assert result.status is Status.SUCCESS and result.enforced is False
        assert await _provider_calls(plane) == before + 1
        rows = await wait_for(lambda: _rows_if(plane, ["pt-no-gateway"], 1), timeout=30)
    assert rows[0]["reason"] == "no gateway is serving this environment"


def test_the_state_dir_is_the_setting_else_a_folder_of_its_own(monkeypatch, tmp_path):
    from switchboard_sdk._journal import default_root

    monkeypatch.delenv("SB_SDK_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "switchboard" / "sdk"
    monkeypatch.setenv("SB_SDK_STATE_DIR", str(tmp_path / "explicit"))
    assert default_root() == tmp_path / "explicit"

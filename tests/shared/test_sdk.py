"""The agent SDK: async and blocking clients against real services, and the unreachable plane."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import orjson
import pytest

from shared.contracts import Status
from switchboard_sdk import Client, SyncClient
from switchboard_sdk.errors import ControlPlaneUnavailable
from tests.support.servers import NatsServer
from tests.support.stack import wait_for


async def test_the_blocking_client_invokes_from_a_thread_without_a_loop(running):
    def blocking_call():
        with SyncClient(running.infra.nats_url, env=running.env, agent="sync-agent") as sb:
            return sb.invoke("support-triage", [{"role": "user", "content": "hi"}], session_id="s-sync")

    # A thread of its own: the services answer from this test's event loop.
    result = await asyncio.to_thread(blocking_call)

    assert result.status is Status.SUCCESS
    assert result.output.startswith("[openai-sim/gpt-sim-large] ")


async def test_no_gateway_is_control_plane_unavailable(stack):
    async with Client(stack.infra.nats_url, env=stack.env) as sb:  # nothing serves this env
        with pytest.raises(ControlPlaneUnavailable) as caught:
            await sb.invoke("support-triage", "hello", timeout=2)
    assert caught.value.code == "control_plane_unavailable"
    async with Client(stack.infra.nats_url, env=stack.env) as sb:  # a stream degrades the same way
        with pytest.raises(ControlPlaneUnavailable):
            async with sb.stream("support-triage", "hello", timeout=2) as stream:
                [chunk async for chunk in stream]


async def test_an_unreachable_nats_is_control_plane_unavailable_within_the_connect_timeout(caplog):
    started = asyncio.get_running_loop().time()
    with caplog.at_level(logging.DEBUG), pytest.raises(ControlPlaneUnavailable):
        await Client("nats://127.0.0.1:1", env="dev", connect_timeout=1.0).connect()
    assert asyncio.get_running_loop().time() - started < 5
    # the agent's logs get no traceback per failed attempt (nats-py's default error callback)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_sbctl_with_nats_unreachable_fails_with_a_code_instead_of_hanging(infra, env_name):
    from tests.support.helpers import run_sbctl

    unreachable = replace(infra, nats_url="nats://127.0.0.1:1")
    started = asyncio.get_running_loop().time()
    code, out, _ = await run_sbctl(unreachable, "config", "show", "--env", env_name, "--json", timeout=30)

    assert code == 3  # documented: unavailable
    assert orjson.loads(out)["error"]["code"] == "unavailable"
    # Interpreter start-up included, which is slow on a busy machine; a hang would take the 30 s.
    assert asyncio.get_running_loop().time() - started < 25


async def test_sbctl_nats_unreachable_is_one_line_from_a_flag_given_anywhere(infra, env_name):
    from tests.support.helpers import run_sbctl

    code, out, err = await run_sbctl(
        infra, "config", "--nats-url", "nats://127.0.0.1:1", "show", "--env", env_name, timeout=30
    )

    assert (code, out) == (3, "")
    assert err == "error [unavailable]: cannot reach NATS at nats://127.0.0.1:1 within 3s\n"


def _established_to(port: int) -> int:
    """Open TCP connections to a local port, as the kernel lists them (client sides only)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    count += 1
    return count


async def test_concurrent_first_invocations_share_one_connection(tmp_path):
    nats_server = await NatsServer(tmp_path).start()
    try:
        sb = Client(nats_server.url, env="dev", state_dir=tmp_path / "sdk")  # never connected yet
        results = await asyncio.gather(
            *(sb.invoke("support-triage", "hello", timeout=2) for _ in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, ControlPlaneUnavailable) for r in results), results  # no gateway
        assert _established_to(nats_server.port) == 1
        await sb.close()
        await wait_for(lambda: _established_to(nats_server.port) == 0, message="the connection closed")
    finally:
        await nats_server.stop()

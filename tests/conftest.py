"""Fixtures: real NATS, Redis and PostgreSQL; every test gets its own SB_ENV, policy copy,
simulator and Redis key prefix, cleaned up afterwards."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from shared import keys
from tests.support import infra as infra_support
from tests.support.stack import Simulator, Stack, copy_policy, new_env

SIM_KEYS = {"SB_OPENAI_SIM_API_KEY": "sk-test-openai", "SB_ANTHROPIC_SIM_API_KEY": "sk-test-anthropic"}


@pytest.fixture(scope="session", autouse=True)
def sdk_state_dir(tmp_path_factory):
    """SDK clients keep learned degradation modes and passthrough records here, not in $HOME."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SB_SDK_STATE_DIR", str(tmp_path_factory.mktemp("sdk-state")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def infra() -> infra_support.Infra:
    found = infra_support.discover()
    infra_support.migrate(found)
    return found


@pytest.fixture
def env_name() -> str:
    return new_env()


@pytest.fixture
async def redis(infra, env_name):
    """A client of the test's Redis; every key under the test's env prefix is removed after."""
    client = aioredis.from_url(infra.redis_url)
    yield client
    stale = [k async for k in client.scan_iter(match=keys.prefix(env_name) + "*")]
    if stale:
        await client.delete(*stale)
    await client.aclose()


@pytest.fixture
async def simulator(monkeypatch):
    sim = await Simulator().start()
    monkeypatch.setenv("SB_SIMULATOR_URL", sim.url)
    for key, value in SIM_KEYS.items():
        monkeypatch.setenv(key, value)
    yield sim
    await sim.stop()


@pytest.fixture
async def stack(infra, env_name, simulator, tmp_path):
    """An isolated environment with no services started yet: call `await stack.start(...)`."""
    s = Stack(infra, env_name, copy_policy(tmp_path), simulator)
    yield s
    await s.close()


@pytest.fixture
async def running(stack):
    """Every service of an isolated environment, running in this event loop."""
    await stack.start()
    return stack

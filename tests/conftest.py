"""Fixtures: real NATS, Redis and PostgreSQL; every test gets its own SB_ENV, policy copy,
simulator and Redis key prefix, cleaned up afterwards."""

from __future__ import annotations

import os

import pytest
import redis.asyncio as aioredis

from shared import keys
from tests.support import infra as infra_support
from tests.support.nats_server import AuthNats
from tests.support.stack import Simulator, Stack, copy_policy, new_env

SIM_KEYS = {"SB_OPENAI_SIM_API_KEY": "sk-test-openai", "SB_ANTHROPIC_SIM_API_KEY": "sk-test-anthropic"}


@pytest.fixture(scope="session", autouse=True)
def sdk_state_dir(tmp_path_factory):
    """SDK clients keep learned degradation modes and passthrough records here, not in $HOME."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SB_SDK_STATE_DIR", str(tmp_path_factory.mktemp("sdk-state")))
    yield
    mp.undo()


# Agents the tests run as (SDK clients with `agent=`); each gets a NATS user in the authenticated run.
TEST_AGENTS = ["alice", "bob", "carol", "sync-agent", "triage-bot", "demo-agent", "bench"]


@pytest.fixture(scope="session")
def infra(tmp_path_factory):
    """The infrastructure. With SB_TEST_NATS_AUTH=1 (`make test-auth`), NATS is a server of the
    run's own with the generated users, and every service, client and sbctl the tests start
    authenticates as its role (SB_NATS_CREDENTIALS_DIR)."""
    found = infra_support.for_worker(infra_support.discover())
    infra_support.migrate(found)
    if os.environ.get("SB_TEST_NATS_AUTH") != "1":
        yield found
        return
    server = AuthNats(tmp_path_factory.mktemp("nats-auth"), TEST_AGENTS, test_user=True).start()
    mp = pytest.MonkeyPatch()
    mp.setenv("SB_NATS_CREDENTIALS_DIR", str(server.credentials))
    raw = {"user": "tests", "password": server.password("tests")}
    yield infra_support.Infra(server.url, found.redis_url, found.database_url, nats_options=raw)
    mp.undo()
    server.stop()


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

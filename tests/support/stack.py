"""Running Switchboard inside a test: its own SB_ENV, simulator, policy copy and services,
all removed afterwards (JetStream stream, KV bucket, Redis keys, audit rows)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from pathlib import Path

import asyncpg
import nats
import redis.asyncio as aioredis
import yaml
from nats.js.errors import NotFoundError

from services import catalog
from services.simulator.app import start as start_simulator
from shared import keys, names
from shared.live_config import ConfigStore, VersionDoc
from shared.policy import Policy, load_dir_or_raise
from shared.settings import Settings
from shared.simctl import SimulatorControl
from switchboard_sdk import Client, nats_auth
from tests.support.infra import Infra

REPO = Path(__file__).resolve().parents[2]
SERVICES = {e.name: (e.service_class, e.settings_class) for e in catalog.SERVICES}


def new_env() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):
    """Poll an (async or plain) predicate until it is truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


class Simulator:
    """The provider simulator in-process on a free port, with its control client."""

    def __init__(self) -> None:
        self.runner = None
        self.port = 0
        self.control: SimulatorControl | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Simulator:
        self.runner, self.port = await start_simulator("127.0.0.1", 0, 0)
        self.control = SimulatorControl(self.url)
        return self

    async def stop(self) -> None:
        if self.control:
            await self.control.aclose()
        if self.runner:
            await self.runner.cleanup()


class Stack:
    """Services of one test environment. `start(*names)` runs them in this event loop."""

    def __init__(self, infra: Infra, env: str, policy_dir: Path, simulator: Simulator) -> None:
        self.infra = infra
        self.env = env
        self.policy_dir = policy_dir
        self.sim = simulator
        self.services: dict[str, object] = {}
        self._clients: list[Client] = []

    def settings(self, service: str, **overrides):
        _, settings_cls = SERVICES[service]
        base = dict(
            nats_url=self.infra.nats_url,
            redis_url=self.infra.redis_url,
            database_url=self.infra.database_url,
            env=self.env,
            config_dir=str(self.policy_dir),
            http_port=0,
            drain_timeout_s=5.0,
        )
        base.update(dict.fromkeys(catalog.entry(service).other_ports, 0))
        base.update(overrides)
        return settings_cls(**base)

    async def start(self, *service_names: str, **overrides):
        for name in service_names or tuple(SERVICES):
            service_cls, _ = SERVICES[name]
            self.services[name] = await service_cls(self.settings(name, **overrides.get(name, {}))).start()
        return self

    async def stop(self, name: str) -> None:
        service = self.services.pop(name)
        await service.shutdown()

    def __getitem__(self, name: str):
        return self.services[name]

    async def client(self, **kwargs) -> Client:
        client = await Client(self.infra.nats_url, env=self.env, **kwargs).connect()
        self._clients.append(client)
        return client

    def policy(self) -> dict:
        """The policy files of this test as one mutable document."""
        return load_dir_or_raise(self.policy_dir).model_dump(mode="json")

    async def apply(self, policy: dict | None = None, *, wait: bool = True) -> VersionDoc:
        """Apply a policy document as the next live version; wait until every service runs it."""
        doc_policy = Policy.model_validate(policy if policy is not None else self.policy())
        nc = await operator_connect(self.infra.nats_url)
        try:
            doc = await ConfigStore(nc.jetstream(), self.env).apply(doc_policy, applied_by="tests")
        finally:
            await nc.close()
        if wait:
            await wait_for(
                lambda: all(
                    s.config_version == str(doc.version)
                    for s in self.services.values()
                    if s.config is not None
                ),
                message=f"services to run version {doc.version}",
            )
        return doc

    def write_policy(self, filename: str, document: dict) -> None:
        (self.policy_dir / filename).write_text(yaml.safe_dump(document))

    async def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()
        for service in reversed(list(self.services.values())):
            with contextlib.suppress(Exception):
                await service.shutdown()
        self.services.clear()
        await cleanup_env(self.infra, self.env)


async def cleanup_env(infra: Infra, env: str) -> None:
    """Remove everything an environment left in NATS, Redis and PostgreSQL."""
    nc = await operator_connect(infra.nats_url)
    try:
        js = nc.jetstream()
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(names.events_stream(env))
        for bucket in (names.config_bucket(env), names.switches_bucket(env), names.rollout_bucket(env)):
            with contextlib.suppress(NotFoundError, Exception):
                await js.delete_key_value(bucket)
    finally:
        await nc.close()
    r = aioredis.from_url(infra.redis_url)
    try:
        batch = [k async for k in r.scan_iter(match=keys.prefix(env) + "*", count=500)]
        if batch:
            await r.delete(*batch)
    finally:
        await r.aclose()
    conn = await asyncpg.connect(infra.database_url)
    try:
        await conn.execute("select audit_drop_env($1)", env)
        tables = ("config_versions", "dead_letters", "policy_history", "policy_envs")
        for table in (*tables, "hitl_audit", "hitl_reviews", "hitl_reviewers"):
            await conn.execute(f"delete from {table} where env = $1", env)
    finally:
        await conn.close()


async def operator_connect(url: str):
    """A NATS connection as the operator (credentials from SB_NATS_* when authentication is on)."""
    return await nats.connect(url, **nats_auth.connect_options(Settings(), nats_auth.OPERATOR))


def copy_policy(tmp: Path) -> Path:
    target = tmp / "config"
    shutil.copytree(REPO / "config", target)
    return target

"""Find NATS, Redis and PostgreSQL for the tests: the URLs in the environment, else the local
defaults, else containers when a Docker engine exists; fail with a clear message otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import pytest

DEFAULTS = {
    "SB_NATS_URL": "nats://127.0.0.1:4222",
    "SB_REDIS_URL": "redis://127.0.0.1:6379/0",
    "SB_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/switchboard",
}


@dataclass(frozen=True)
class Infra:
    nats_url: str
    redis_url: str
    database_url: str
    # How a test's own raw connection authenticates (a test may publish anything; the services,
    # clients and sbctl it runs use their roles). Empty when NATS is open.
    nats_options: dict = field(default_factory=dict, hash=False)


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=1):
            return True
    except OSError:
        return False


def _docker_engine() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0


def _containers() -> Infra:  # pragma: no cover - only where a Docker engine runs
    from testcontainers.core.container import DockerContainer
    from testcontainers.postgres import PostgresContainer
    from testcontainers.redis import RedisContainer

    nats = DockerContainer("nats:2.10").with_command("-js").with_exposed_ports(4222)
    nats.start()
    redis = RedisContainer("redis:7").start()
    pg = PostgresContainer(
        "postgres:15", username="postgres", password="postgres", dbname="switchboard"
    ).start()
    return Infra(
        nats_url=f"nats://{nats.get_container_host_ip()}:{nats.get_exposed_port(4222)}",
        redis_url=f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0",
        database_url=pg.get_connection_url().replace("postgresql+psycopg2", "postgresql"),
    )


def discover() -> Infra:
    urls = {k: os.environ.get(k, v) for k, v in DEFAULTS.items()}
    missing = [f"{k}={v}" for k, v in urls.items() if not _answers(v)]
    if not missing:
        return Infra(urls["SB_NATS_URL"], urls["SB_REDIS_URL"], urls["SB_DATABASE_URL"])
    if _docker_engine():
        return _containers()
    pytest.fail(
        "NATS, Redis and PostgreSQL must be reachable for the tests; nothing answers at "
        + ", ".join(missing)
        + ". Run `bash deploy/local/infra.sh` (or `make infra`), or set the SB_*_URL variables.",
        pytrace=False,
    )


def for_worker(infra: Infra) -> Infra:
    """Under pytest-xdist each worker gets a database of its own (the URL's name plus the worker
    id, created if missing), so no test sees rows another worker writes at the same moment."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return infra
    parts = urlsplit(infra.database_url)
    name = f"{parts.path.lstrip('/') or 'switchboard'}_{worker}"
    asyncio.run(_create_database(infra.database_url, name))
    url = urlunsplit(parts._replace(path=f"/{name}"))
    return Infra(infra.nats_url, infra.redis_url, url, nats_options=infra.nats_options)


async def _create_database(base_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base_url, timeout=10)
    try:
        if not await conn.fetchval("select 1 from pg_database where datname = $1", name):
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()


def migrate(infra: Infra) -> None:
    from shared import migrate as migrations

    asyncio.run(migrations.apply(infra.database_url, verbose=False))

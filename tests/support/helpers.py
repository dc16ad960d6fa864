"""Small helpers shared by the foundation tests: ops HTTP calls, metric samples, raw NATS
requests, sbctl and service processes. Everything talks to the real thing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import httpx
import orjson
from prometheus_client import REGISTRY

from bench.stack import free_port
from tests.support.infra import Infra
from tests.support.stack import REPO, wait_for

SIM_KEYS = {"SB_OPENAI_SIM_API_KEY": "sk-test-openai", "SB_ANTHROPIC_SIM_API_KEY": "sk-test-anthropic"}


# --- ops HTTP ------------------------------------------------------------------------------


async def ops_get(port: int, path: str, timeout: float = 5.0) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as http:
        return await http.get(path)


async def healthz(service) -> dict:
    response = await ops_get(service.ops.port, "/healthz")
    assert response.status_code == 200, response.text
    return response.json()


# --- metrics -------------------------------------------------------------------------------


def sample(name: str, **labels: str) -> float:
    """The value of one sample in this process's registry (0 when it has never been touched)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def process_metric(port: int, name: str, **labels: str) -> float:
    """One sample from a process's /metrics (0 when absent)."""
    text = (await ops_get(port, "/metrics")).text
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- raw NATS ------------------------------------------------------------------------------


async def ask(nc, subject: str, data: bytes, timeout: float = 5.0) -> dict:
    """A raw request; the reply must be a JSON object."""
    msg = await nc.request(subject, data, timeout=timeout)
    reply = orjson.loads(msg.data)
    assert isinstance(reply, dict), f"reply on {subject} is not an object: {msg.data[:200]!r}"
    return reply


# --- sbctl ---------------------------------------------------------------------------------


def infra_env(infra: Infra, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SB_NATS_URL=infra.nats_url,
        SB_REDIS_URL=infra.redis_url,
        SB_DATABASE_URL=infra.database_url,
        PYTHONUNBUFFERED="1",
    )
    env.pop("SB_ENV", None)
    env.update(extra)
    return env


async def run_sbctl(
    infra: Infra, *args: str, timeout: float = 30.0, extra_env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """`python -m shared.sbctl ARGS` as a subprocess (never blocking the event loop, where the
    services under test run); returns (exit code, stdout, stderr)."""
    env = infra_env(infra, **(extra_env or {}))
    return await run_process(sys.executable, "-m", "shared.sbctl", *args, cwd=REPO, env=env, timeout=timeout)


async def run_process(*argv: str, cwd, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """A subprocess without blocking the event loop; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode(), err.decode()


# --- service processes ---------------------------------------------------------------------


class ServiceProcess:
    """`python -m services.<name>` with its stdout (JSON logs) in a file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = {**env, "SB_HTTP_PORT": str(self.port)}
        self.log_path = log_dir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> ServiceProcess:
        with self.log_path.open("wb") as out:  # the child keeps its own descriptor
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"services.{self.name}",
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        return self

    async def wait_ready(self, timeout: float = 30.0) -> None:
        async def ready() -> bool:
            if self.proc.returncode is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                response = await ops_get(self.port, "/readyz", timeout=1.0)
            except httpx.HTTPError:
                return False
            return response.status_code == 200 and response.json()["ready"] is True

        await wait_for(ready, timeout=timeout, interval=0.1, message=f"{self.name} /readyz")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30.0) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict]:
        """Every stdout line, parsed; a line that is not a JSON object fails the test."""
        lines = []
        for line in self.output().splitlines():
            if not line.strip():
                continue
            entry = orjson.loads(line)
            assert isinstance(entry, dict), line
            lines.append(entry)
        return lines

    async def stop(self) -> None:
        """Terminate (then kill) if still running; safe to call twice."""
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

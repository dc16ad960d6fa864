"""The agent SDK installs alone: a fresh virtualenv with only its wheel (and what that pulls in)
invokes a workflow against running services, and holds no module of the server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]
# One worker runs the whole module under `make test`'s workers: one wheel and one virtualenv.
pytestmark = pytest.mark.xdist_group("sdk-distribution")
SERVER_ONLY = {
    "switchboard",
    "redis",
    "asyncpg",
    "fastapi",
    "uvicorn",
    "httpx",
    "aiohttp",
    "opentelemetry-sdk",
}

AGENT = textwrap.dedent(
    """
    import importlib.util, json, sys
    from switchboard_sdk import SyncClient

    with SyncClient(agent="alice") as sb:
        result = sb.invoke("support-triage", "hello from a lone agent", session_id="s-alone")
    print(json.dumps({
        "status": result.status.value,
        "invocation_id": result.invocation_id,
        "server_modules": [m for m in ("shared", "services") if importlib.util.find_spec(m)],
    }))
    """
)


@pytest.fixture(scope="session")
def sdk_venv(tmp_path_factory) -> Path:
    """One wheel, one virtualenv per test run (pip resolves the wheel's dependencies)."""
    root = tmp_path_factory.mktemp("sdk-alone")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", str(REPO / "sdk"), "-w", str(root / "wheel")], check=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    wheel = next((root / "wheel").glob("switchboard_sdk-*.whl"))
    subprocess.run([*pip, "--python", str(python), "install", str(wheel)], check=True)
    return python


def _installed(python: Path) -> set[str]:
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "list", "--format", "json"],
        check=True,
        capture_output=True,
    ).stdout
    return {d["name"].lower().replace("_", "-") for d in orjson.loads(listing)}


@pytest.mark.timeout(240)  # includes the fixture building the wheel and virtualenv: slow when busy
async def test_a_virtualenv_with_only_the_sdk_invokes_a_workflow(running, sdk_venv, tmp_path):
    before = (await running.sim.control.stats())["total"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(SB_NATS_URL=running.infra.nats_url, SB_ENV=running.env)

    # Out of the checkout (cwd is on sys.path), so only site-packages can provide a module.
    proc = await asyncio.create_subprocess_exec(
        str(sdk_venv), "-c", AGENT, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)

    assert proc.returncode == 0, err.decode()
    reply = orjson.loads(out)
    assert reply["status"] == "success"
    assert reply["server_modules"] == []
    assert (await running.sim.control.stats())["total"] == before + 1  # the provider was called once
    assert "switchboard-sdk" in _installed(sdk_venv)
    assert not SERVER_ONLY & _installed(sdk_venv)

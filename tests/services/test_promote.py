"""Staging before production: `sbctl config promote` publishes exactly what ran in staging,
refused before the soak time and when a staging replica did not acknowledge it; a protected
environment refuses a direct apply unless forced, and the override is in the history."""

from __future__ import annotations

import json
import time

import asyncpg
import pytest

from tests.support.helpers import run_sbctl
from tests.support.rollout import put_report
from tests.support.stack import cleanup_env, new_env

pytestmark = pytest.mark.timeout(120)
OPS = {"SB_OPERATOR": "oncall-bob"}


@pytest.fixture
async def prod(infra):
    """A second environment standing for production (no services: nothing needs to run there)."""
    env = new_env()
    yield env
    await cleanup_env(infra, env)


async def sbctl(stack, *args: str) -> tuple[int, str, str]:
    return await run_sbctl(stack.infra, *args, extra_env=OPS, timeout=60)


async def history_rows(stack, env: str) -> list[dict]:
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        rows = await conn.fetch("select * from policy_history where env = $1 order by version", env)
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def backdate(stack, env: str, seconds: int) -> None:
    """Make the env's versions look as if they were applied `seconds` ago."""
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        await conn.execute(
            "update policy_history set applied_at = applied_at - make_interval(secs => $2) where env = $1",
            env,
            float(seconds),
        )
    finally:
        await conn.close()


async def test_promote_is_refused_before_the_soak_time_and_accepted_after(running, prod):
    staging = running.env
    code, out, err = await sbctl(
        running, "config", "protect", "--env", prod, "--soak", "3600", "--reason", "prod"
    )
    assert code == 0, err
    code, out, err = await sbctl(
        running, "config", "apply", str(running.policy_dir), "--reason", "try it", "--env", staging
    )
    assert code == 0, out + err
    promote = ("config", "promote", "--from", staging, "--to", prod, "--reason", "soaked")

    code, out, err = await sbctl(running, *promote)

    assert code == 1
    assert err.startswith("error [refused]: version 1 has run in")
    assert err.rstrip().endswith(f"{prod} requires 3600s of soak")
    assert await history_rows(running, prod) == []

    await backdate(running, staging, 3700)
    code, out, err = await sbctl(running, *promote, "--json")

    assert code == 0, out + err
    report = json.loads(out)
    assert (report["version"], report["promoted_from_env"], report["promoted_from_version"]) == (
        1,
        staging,
        1,
    )
    [source] = await history_rows(running, staging)
    [target] = await history_rows(running, prod)
    assert target["checksum"] == source["checksum"] == report["checksum"]
    assert target["policy"] == source["policy"]
    assert (target["action"], target["promoted_from_env"], target["applied_by"]) == (
        "promote",
        staging,
        "oncall-bob",
    )


async def test_promote_is_refused_when_a_staging_replica_did_not_acknowledge(running, prod):
    staging = running.env
    await sbctl(running, "config", "protect", "--env", prod, "--soak", "0", "--reason", "prod")
    code, out, err = await sbctl(
        running,
        "config",
        "apply",
        str(running.policy_dir),
        "--reason",
        "try",
        "--env",
        staging,
        "--wait",
        "1",
    )
    assert code == 0, out + err
    await put_report(
        running,
        service="gateway",
        replica="wedged-1-aaaaaa",
        version=0,
        config_version="files:x",
        reported_at=time.time() + 3600,
    )

    code, _, err = await sbctl(running, "config", "promote", "--from", staging, "--to", prod, "--reason", "x")

    assert code == 1
    assert err.strip() == (
        f"error [refused]: 1 of 6 live replica(s) in {staging} did not acknowledge version 1"
        f" (see sbctl config status --env {staging})"
    )
    assert await history_rows(running, prod) == []


async def test_a_protected_env_refuses_a_direct_apply_unless_forced_and_records_the_override(running, prod):
    await sbctl(running, "config", "protect", "--env", prod, "--reason", "production")
    apply = ("config", "apply", str(running.policy_dir), "--env", prod)

    code, out, err = await sbctl(running, *apply, "--reason", "hotfix")
    assert code == 1
    assert err.startswith(f"error [refused]: env {prod} is protected")
    assert await history_rows(running, prod) == []

    code, out, err = await sbctl(running, *apply, "--force", "--reason", "hotfix during outage")
    assert code == 0, out + err
    [row] = await history_rows(running, prod)
    assert (row["forced"], row["reason"], row["applied_by"]) == (True, "hotfix during outage", "oncall-bob")
    code, out, err = await sbctl(running, "config", "history", "--env", prod)
    assert "apply (forced past protection)" in out and "hotfix during outage" in out

"""Rollout acknowledgement: every replica reports the version it runs or the error it rejected
it with; `sbctl config apply` waits for them, prints the rollout table and fails when a live
replica rejected the version or stayed silent; a replica that is gone is shown as stale."""

from __future__ import annotations

import asyncio
import json
import time

import nats
import pytest

from shared import rollout
from shared.contracts import ReplicaReport
from tests.support.helpers import ServiceProcess, run_sbctl
from tests.support.rollout import put_report, replica_env_without, use_variable_without_default
from tests.support.stack import wait_for

pytestmark = pytest.mark.timeout(120)
VAR = "SB_TEST_SIM_ROOT"  # set for the in-process services and sbctl, not for the process replica


async def apply(stack, *extra: str) -> tuple[int, str, str]:
    return await run_sbctl(
        stack.infra,
        "config",
        "apply",
        str(stack.policy_dir),
        "--reason",
        "rollout test",
        "--env",
        stack.env,
        *extra,
        extra_env={VAR: stack.sim.url},
        timeout=60,
    )


async def test_rollout_table_with_a_replica_that_rejects_and_one_that_is_gone(running, tmp_path, monkeypatch):
    env = replica_env_without(running, VAR)
    monkeypatch.setenv(VAR, running.sim.url)  # the in-process replicas have it
    replica = await ServiceProcess("router", env, tmp_path).start()
    try:
        await replica.wait_ready()
        code, out, err = await apply(running)
        assert code == 0, out + err
        assert out.splitlines()[-1] == "rollout: all 6 live replica(s) run version 1"
        await put_report(
            running,
            service="gateway",
            replica="old-host-41-dead00",
            version=1,
            config_version="1",
            reported_at=time.time() - 120,
        )

        use_variable_without_default(running, VAR)
        code, out, err = await apply(running)

        assert code == 1, out + err
        lines = out.splitlines()
        assert lines[0].startswith(f"applied: version 2 to env {running.env}")
        rows = {tuple(line.split()[:4]): line for line in lines[2:-1]}
        states = sorted((service, version, state) for service, _, version, state in rows)
        assert states == [
            ("budget", "2", "ok"),
            ("gateway", "1", "stale"),
            ("gateway", "2", "ok"),
            ("hitl", "2", "ok"),
            ("ingress", "2", "ok"),
            ("router", "1", "rejected"),
            ("router", "2", "ok"),
        ]
        rejected = next(line for key, line in rows.items() if key[3] == "rejected")
        assert f"${{{VAR}}} is not set and has no default" in rejected
        gone = next(line for key, line in rows.items() if key[3] == "stale")
        assert "old-host-41-dead00" in gone and "gone?" in gone
        assert lines[-1] == "rollout: FAILED, 1 of 6 live replica(s) rejected it or stayed silent"

        # the replica that rejected keeps running the last good version
        code, out, err = await run_sbctl(running.infra, "config", "status", "--env", running.env, "--json")
        assert code == 1, err
        status = json.loads(out)
        assert status["version"] == 2 and status["ok"] is False
        by_state = sorted((r["service"], r["state"]) for r in status["rollout"])
        assert by_state == [
            ("budget", "ok"),
            ("gateway", "ok"),
            ("gateway", "stale"),
            ("hitl", "ok"),
            ("ingress", "ok"),
            ("router", "ok"),
            ("router", "rejected"),
        ]
        assert {r["version"] for r in status["rollout"] if r["state"] == "rejected"} == {"1"}
    finally:
        await replica.stop()


async def test_a_live_replica_that_never_answers_is_silent_and_apply_fails(running):
    await put_report(
        running,
        service="budget",
        replica="wedged-7-abc123",
        version=0,
        config_version="files:abc",
        reported_at=time.time() + 3600,  # keeps looking alive for the whole test
    )

    code, out, err = await apply(running, "--wait", "1", "--json")

    assert code == 1, err
    report = json.loads(out)
    assert report["ok"] is False and report["version"] == 1
    states = {
        (r["replica"] if r["replica"].startswith("wedged") else r["service"]): r["state"]
        for r in report["rollout"]
    }
    assert states == {
        "wedged-7-abc123": "silent",
        "gateway": "ok",
        "router": "ok",
        "budget": "ok",
        "hitl": "ok",
        "ingress": "ok",
    }


async def test_a_replica_that_stops_cleanly_withdraws_its_report(running):
    await running.apply()
    nc = await nats.connect(running.infra.nats_url, **running.infra.nats_options)
    try:
        before = {r.service for r in await rollout.reports(nc.jetstream(), running.env)}
        await running.stop("router")
        await wait_for(
            lambda: _services(nc, running.env, lambda s: "router" not in s), message="the report withdrawn"
        )
    finally:
        await nc.close()
    assert before == {"gateway", "router", "budget", "hitl", "ingress"}


async def _services(nc, env, predicate) -> bool:
    return predicate({r.service for r in await rollout.reports(nc.jetstream(), env)})


async def test_every_report_is_listed_while_the_replicas_rewrite_theirs(stack):
    """The table is read while replicas report a new version: a replica rewriting its report at
    that moment must still be listed (a KV watch's initial listing could miss it)."""
    nc = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    js = nc.jetstream()
    kv = await rollout.bucket(js, stack.env)
    replicas = [f"replica-{i}" for i in range(6)]

    async def report(replica: str, version: int) -> None:
        doc = ReplicaReport(
            service="router",
            replica=replica,
            version=version,
            config_version=str(version),
            reported_at=time.time(),
            heartbeat_s=5.0,
        )
        await kv.put(f"router.{replica}", doc.model_dump_json().encode())

    for replica in replicas:
        await report(replica, 1)
    listed = []

    async def read() -> None:
        for _ in range(40):
            listed.append(sorted(r.replica for r in await rollout.reports(js, stack.env)))

    async def churn() -> None:
        version = 1
        while len(listed) < 40:
            version += 1
            for replica in replicas:
                await report(replica, version)

    try:
        await asyncio.gather(read(), churn())
    finally:
        await nc.close()
    assert all(names == replicas for names in listed), [n for n in listed if n != replicas][:3]

"""The hitl service like every other: garbage on each of its subjects gets a coded error and it
keeps serving; as a real process it serves /healthz, /readyz, /metrics and the reviewer API, its
metrics move by exactly what happened, and SIGTERM stops it cleanly."""

from __future__ import annotations

import signal

import httpx
import nats
import orjson
import pytest

from shared import names
from tests.support.helpers import SIM_KEYS, ServiceProcess, free_port, infra_env, ops_get, process_metric
from tests.support.hitl import add_reviewer
from tests.support.stack import wait_for

pytestmark = pytest.mark.timeout(90)
OPS = (
    "open",
    "status",
    "reviewers.add",
    "reviewers.revoke",
    "reviewers.list",
    "queues",
    "pending",
    "queue_op",
    "export",
)
BAD = [
    b"{not json",
    b"[]",
    b'{"unknown": 1}',
    orjson.dumps({"op": "extend", "queue": "payments", "by_s": 60, "actor": "a", "reason": "x\x00y"}),
    orjson.dumps({"name": "a\x00b", "queues": ["payments"], "by": "x"}),
    b"\xff\xfe",
]


async def test_garbage_on_every_subject_gets_a_coded_error_and_the_service_keeps_serving(stack):
    await stack.start("hitl")
    nc = await nats.connect(stack.infra.nats_url)
    try:
        for op in OPS:
            for data in BAD:
                msg = await nc.request(names.hitl(stack.env, op), data, timeout=5)
                reply = orjson.loads(msg.data)
                assert reply["error"]["code"] == "invalid_request", (op, data, reply)
        msg = await nc.request(names.hitl(stack.env, "queues"), b"{}", timeout=5)
        assert [q["queue"] for q in orjson.loads(msg.data)["queues"]] == ["payments", "payments-leads"]
    finally:
        await nc.close()


async def test_as_a_process_it_serves_ops_and_api_and_counts_exactly(stack, tmp_path):
    await stack.start("router", "budget", "gateway")
    api_port = free_port()
    env = infra_env(
        stack.infra,
        SB_ENV=stack.env,
        SB_CONFIG_DIR=str(stack.policy_dir),
        SB_SIMULATOR_URL=stack.sim.url,
        SB_API_PORT=str(api_port),
        SB_SWEEP_INTERVAL_S="0.1",
        **SIM_KEYS,
    )
    proc = ServiceProcess("hitl", env, tmp_path)
    await proc.start()
    try:
        await proc.wait_ready()
        health = (await ops_get(proc.port, "/healthz")).json()
        assert health["service"] == "hitl" and health["api_port"] == api_port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
            openapi = (await http.get("/openapi.json")).json()
        assert "/v1/reviews/{review_id}/approve" in openapi["paths"]

        sb = await stack.client()
        held = [await sb.invoke("refunds", f"Refund {i}.", metadata={"amount": 900}) for i in range(3)]

        async def depth_is_three() -> bool:
            return await process_metric(proc.port, "switchboard_hitl_queue_depth", queue="payments") == 3

        await wait_for(depth_is_three, message="the depth gauge")
        assert (
            await process_metric(proc.port, "switchboard_hitl_oldest_pending_seconds", queue="payments") >= 0
        )
        token = await add_reviewer(stack, "alice", "payments")
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{api_port}", headers={"Authorization": f"Bearer {token}"}
        ) as http:
            await http.post(f"/v1/reviews/{held[0].review_id}/approve", json={})
            await http.post(f"/v1/reviews/{held[1].review_id}/reject", json={"reason": "no"})

        async def depth_is_one() -> bool:
            return await process_metric(proc.port, "switchboard_hitl_queue_depth", queue="payments") == 1

        await wait_for(depth_is_one, message="the depth gauge to fall")
        approved = await process_metric(
            proc.port, "switchboard_hitl_decisions_total", queue="payments", decision="approved", by="human"
        )
        rejected = await process_metric(
            proc.port, "switchboard_hitl_decisions_total", queue="payments", decision="rejected", by="human"
        )
        timeouts = await process_metric(
            proc.port, "switchboard_hitl_decisions_total", queue="payments", decision="timeout", by="system"
        )
        assert (approved, rejected, timeouts) == (1, 1, 0)

        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    finally:
        await proc.stop()

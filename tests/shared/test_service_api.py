"""The NATS service API: every service answers $SRV.PING/INFO/STATS as nats.micro does, one
answer per replica, with its version, environment and per-endpoint counts; `sbctl status`
shows them."""

from __future__ import annotations

import json

import nats
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

from shared import names
from shared.contracts import Status
from shared.service_api import version
from tests.support.fallback import extra_service
from tests.support.helpers import run_sbctl
from tests.support.stack import SERVICES

ENDPOINTS = {
    "gateway": {
        "invoke",
        "agent-invoke",
        "gateway-resume",
        "gateway-probe",
    },  # operators', agents', hitl's, probes
    "router": {"router-outcome", "router-status", "router-block", "degradation"},
    "budget": {"budget-reserve", "budget-settle", "budget-extend", "budget-show"},
    "recorder": {
        "recorder-trace",
        "recorder-count",
        "recorder-stats",
        "recorder-invocations",
        "recorder-dead-letters",
    },
    "hitl": {
        "hitl-open",
        "hitl-status",
        "hitl-reviewers-add",
        "hitl-reviewers-revoke",
        "hitl-reviewers-list",
        "hitl-queues",
        "hitl-pending",
        "hitl-queue_op",
        "hitl-export",
    },
    "ingress": {"ingress-keys-add", "ingress-keys-revoke", "ingress-keys-list"},
}


async def gather(nc, subject: str, ids: set[str]) -> list[dict]:
    """The answers of replicas `ids` to one request on `subject`. The service API is not
    env-scoped: replicas of other environments on the same server answer too, and are skipped."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    answers = {}
    try:
        while set(answers) != ids:
            answer = json.loads((await sub.next_msg(timeout=10)).data)
            if answer["id"] in ids:
                answers[answer["id"]] = answer
    finally:
        await sub.unsubscribe()
    return list(answers.values())


async def test_each_replica_answers_ping_info_and_stats_with_exact_counts(running):
    client = await running.client()
    results = [await client.invoke("support-triage", f"hello {i}") for i in range(3)]
    assert [r.status for r in results] == [Status.SUCCESS] * 3
    bad = await client.invoke("no-such-flow", "hello")  # refused: an error reply
    assert bad.error.code == "unknown_workflow"

    async with extra_service(SERVICES["router"][0](running.settings("router"))) as second_router:
        nc = await nats.connect(running.infra.nats_url, **running.infra.nats_options)
        try:
            ids = {second_router.bus.service_id, running["router"].bus.service_id}
            pings = [ServicePing.from_dict(p) for p in await gather(nc, names.service_api("PING"), ids)]
            assert {(p.name, p.version) for p in pings} == {("switchboard-router", version())}

            for service, endpoints in ENDPOINTS.items():
                sid = running[service].bus.service_id
                [info] = await gather(nc, names.service_api("INFO", f"switchboard-{service}", sid), {sid})
                info = ServiceInfo.from_dict(info)
                assert (info.name, info.version, info.metadata["env"]) == (
                    f"switchboard-{service}",
                    version(),
                    running.env,
                )
                assert {e.name for e in info.endpoints} == endpoints

            gateway_id = running["gateway"].bus.service_id
            [stats] = await gather(nc, names.service_api("STATS", "switchboard-gateway"), {gateway_id})
        finally:
            await nc.close()
        stats = ServiceStats.from_dict(stats)
        [invoke] = [e for e in stats.endpoints if e.name == "invoke"]
        assert (invoke.num_requests, invoke.num_errors, invoke.last_error) == (4, 1, "unknown_workflow")
        assert invoke.subject == names.invoke_wildcard(running.env)
        assert invoke.average_processing_time > 0

        # Generous collection windows: the machine may be busy; every replica must be listed.
        code, out, err = await run_sbctl(
            running.infra, "status", "--env", running.env, "--json", "--wait", "3"
        )
        assert code == 0, err
        replicas = json.loads(out)["replicas"]
        assert sorted(r["service"] for r in replicas) == [
            "budget",
            "gateway",
            "hitl",
            "ingress",
            "recorder",
            "router",
            "router",
        ]
        assert {r["id"] for r in replicas if r["service"] == "router"} == ids
        [gateway] = [r for r in replicas if r["service"] == "gateway"]
        assert [(e["name"], e["requests"], e["errors"]) for e in gateway["endpoints"]] == [
            ("invoke", 4, 1),
            ("agent-invoke", 0, 0),
            ("gateway-resume", 0, 0),
            ("gateway-probe", 0, 0),
        ]
        [budget] = [r for r in replicas if r["service"] == "budget"]
        reserve = next(e for e in budget["endpoints"] if e["name"] == "budget-reserve")
        assert (reserve["requests"], reserve["errors"]) == (3, 0)

        code, out, err = await run_sbctl(running.infra, "status", "--env", running.env, "--wait", "3")
        assert code == 0, err
        assert out.splitlines()[0].split()[:3] == ["SERVICE", "ID", "VERSION"]
        assert sum(line.startswith("router ") for line in out.splitlines()) == 2 * len(ENDPOINTS["router"])


async def test_status_of_an_environment_with_nothing_running_says_so(stack):
    code, out, _ = await run_sbctl(stack.infra, "status", "--env", stack.env, "--wait", "0.3")
    assert code == 1
    assert f"no Switchboard service answered in env {stack.env}" in out

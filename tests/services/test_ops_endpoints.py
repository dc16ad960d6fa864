"""Every service's operations port: /healthz, /readyz (one check per dependency) and /metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support.helpers import ops_get
from tests.support.stack import wait_for

READY_CHECKS = {
    "gateway": {"nats", "redis", "config"},
    "router": {"nats", "redis", "config"},
    "budget": {"nats", "redis", "config"},
    "recorder": {"nats", "postgres"},
    "hitl": {"nats", "postgres", "config"},
}
SERVICES = list(READY_CHECKS)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def metrics_of(service) -> dict[tuple[str, frozenset], float]:
    response = await ops_get(service.ops.port, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def check_healthz(stack, name: str) -> None:
    response = await ops_get(stack[name].ops.port, "/healthz")

    assert response.status_code == 200, f"{name}: {response.status_code} {response.text}"
    body = response.json()
    assert body["status"] == "ok"
    assert body["service"] == name
    assert body["env"] == stack.env
    assert body["uptime_s"] >= 0
    if name == "recorder":
        assert "config_version" not in body
    else:
        assert body["config_source"] == "files"
        assert body["config_version"].startswith("files:")


async def test_healthz(running):
    for name in ("gateway", "budget", "recorder"):
        await check_healthz(running, name)


async def test_router_healthz(stack):
    await stack.start("router")
    await check_healthz(stack, "router")


async def test_readyz_lists_every_dependency(running):
    for name in SERVICES:
        response = await ops_get(running[name].ops.port, "/readyz")

        assert response.status_code == 200, f"{name}: {response.text}"
        body = response.json()
        assert body["ready"] is True
        assert body["checks"] == dict.fromkeys(READY_CHECKS[name], "ok"), name


async def test_readyz_is_503_when_redis_is_down(stack):
    await stack.start("gateway", gateway={"redis_url": "redis://127.0.0.1:1/0"})

    response = await ops_get(stack["gateway"].ops.port, "/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert body["checks"]["redis"].startswith("down")
    assert body["checks"]["nats"] == "ok"


async def test_readyz_waits_for_a_policy(stack, tmp_path):
    empty = tmp_path / "no-policy"
    empty.mkdir()
    await stack.start("budget", budget={"config_dir": str(empty)})
    port = stack["budget"].ops.port

    response = await ops_get(port, "/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["config"] == "no policy loaded"

    await stack.apply()

    response = await ops_get(port, "/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["config"] == "ok"


async def test_metrics_are_prometheus_text_with_switchboard_names(running):
    for name in SERVICES:
        found = await metrics_of(running[name])

        assert any(metric.startswith("switchboard_") for metric, _ in found), name
        if name != "recorder":
            assert found[("switchboard_config_version", frozenset({("service", name)}))] == 0, name


async def test_gateway_metrics_after_one_invocation(running):
    labels = frozenset(
        {
            ("workflow", "support-triage"),
            ("status", "success"),
            ("provider", "openai-sim"),
            ("model", "gpt-sim-large"),
        }
    )
    latency = frozenset({("workflow", "support-triage"), ("status", "success")})
    before = await metrics_of(running["gateway"])
    count_before = before.get(("switchboard_invocations_total", labels), 0.0)
    latency_before = before.get(("switchboard_invocation_latency_seconds_count", latency), 0.0)

    result = await (await running.client()).invoke("support-triage", "count me")
    assert result.status.value == "success"

    async def counted():
        found = await metrics_of(running["gateway"])
        return found if found.get(("switchboard_invocations_total", labels)) == count_before + 1 else None

    found = await wait_for(counted, message="the invocation to be counted")
    assert found[("switchboard_invocation_latency_seconds_count", latency)] == latency_before + 1
    assert found[("switchboard_invocation_latency_seconds_sum", latency)] > 0
    assert ("switchboard_invocation_latency_seconds_bucket", latency | {("le", "+Inf")}) in found
    tokens = frozenset(
        {
            ("workflow", "support-triage"),
            ("provider", "openai-sim"),
            ("model", "gpt-sim-large"),
            ("kind", "prompt"),
        }
    )
    assert found[("switchboard_tokens_total", tokens)] >= result.usage.prompt_tokens

"""Live policy: files before any version, hot swap of applied versions in every running service,
rejection of a bad version (last good one stays), and changes that bite on the next call."""

from __future__ import annotations

import time

import nats

from shared import names
from shared.contracts import Status
from shared.live_config import VersionDoc
from shared.policy import load_dir_or_raise
from shared.service import Service
from tests.support.helpers import sample
from tests.support.stack import wait_for

CONFIGURED = ("gateway", "router", "budget")  # the recorder runs without policy


async def put_raw(stack, data: bytes) -> None:
    """Write a value straight into the environment's config KV key, as a careless operator might."""
    nc = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    try:
        kv = await nc.jetstream().key_value(names.config_bucket(stack.env))
        await kv.put(names.CONFIG_KEY, data)
    finally:
        await nc.close()


def bad_version(stack, version: int) -> bytes:
    policy = stack.policy()
    policy["workflows"]["support-triage"]["tiers"][0]["timeout_ms"] = -1
    return (
        VersionDoc(
            version=version, applied_at=time.time(), applied_by="mallory", checksum="0" * 64, policy=policy
        )
        .model_dump_json()
        .encode()
    )


async def healthz(service) -> dict:
    """The body the service's /healthz serves, built in-process (the HTTP route itself is covered by
    tests/services/test_ops_endpoints.py, so a broken route does not hide config behaviour here)."""
    return Service.health(service)


def rejected(service: str) -> float:
    return sample("switchboard_config_rejected_total", service=service)


async def test_services_started_before_any_version_run_on_files(running):
    expected = f"files:{load_dir_or_raise(running.policy_dir).checksum()[:12]}"
    for name in CONFIGURED:
        body = await healthz(running[name])
        assert body["config_source"] == "files", name
        assert body["config_version"] == expected, name
        assert "config_error" not in body
        assert sample("switchboard_config_version", service=name) == 0
    assert "config_source" not in await healthz(running["recorder"])

    result = await (await running.client()).invoke("support-triage", "hi")
    assert result.config_version == expected


async def test_applying_a_version_swaps_every_running_service_without_restart(running):
    before = {name: (id(running[name]), running[name].ops.port) for name in CONFIGURED}
    client = await running.client()
    assert (await client.invoke("support-triage", "hi")).config_version.startswith("files:")

    doc = await running.apply()  # waits until every service reports the version

    assert doc.version == 1
    for name in CONFIGURED:
        body = await healthz(running[name])
        assert (body["config_source"], body["config_version"]) == ("kv", "1"), name
        assert (id(running[name]), running[name].ops.port) == before[name], f"{name} was replaced"
        assert sample("switchboard_config_version", service=name) == 1
    result = await client.invoke("support-triage", "hi")
    assert result.status is Status.SUCCESS
    assert result.config_version == "1"

    await running.apply()
    assert (await client.invoke("support-triage", "hi")).config_version == "2"


async def test_an_invalid_version_is_rejected_and_the_last_good_one_stays(running):
    await running.apply()
    counts = {name: rejected(name) for name in CONFIGURED}

    await put_raw(running, bad_version(running, 2))

    async def all_report_it():
        bodies = [await healthz(running[name]) for name in CONFIGURED]
        return bodies if all("config_error" in b for b in bodies) else None

    bodies = await wait_for(all_report_it, message="every service to report the rejected version")
    for name, body in zip(CONFIGURED, bodies, strict=True):
        assert body["config_version"] == "1", name
        assert body["config_source"] == "kv"
        assert body["config_error"] == "a policy version was rejected; running 1"  # a summary only
        assert "timeout_ms" in running[name].config.last_error  # the reason stays inside (and in the log)
        assert rejected(name) > counts[name], name
        assert sample("switchboard_config_version", service=name) == 1
    result = await (await running.client()).invoke("support-triage", "still fine?")
    assert result.status is Status.SUCCESS
    assert result.config_version == "1"

    # the next good version is taken (numbered after the bad one) and clears the error
    doc = await running.apply()
    assert doc.version == 3
    for name in CONFIGURED:
        assert "config_error" not in await healthz(running[name])


async def test_a_value_that_is_not_a_version_doc_is_rejected_too(running):
    await running.apply()
    count = rejected("router")

    await put_raw(running, b"this is not json")

    await wait_for(lambda: rejected("router") > count, message="the router to reject the value")
    body = await healthz(running["router"])
    assert body["config_version"] == "1"
    assert "config_error" in body
    result = await (await running.client()).invoke("support-triage", "hi")
    assert (result.status, result.config_version) == (Status.SUCCESS, "1")


async def test_a_service_starting_while_the_kv_holds_garbage_still_starts(stack):
    await stack.start("router")
    await stack.apply()
    await put_raw(stack, b"this is not json")
    await wait_for(lambda: stack["router"].config.last_error, message="the router to reject it")

    await stack.start("budget")  # a new replica, or a restart

    body = await healthz(stack["budget"])
    assert "config_error" in body


async def test_a_replica_started_after_a_rejected_version_runs_the_last_good_one(running):
    policy = running.policy()
    policy["workflows"]["support-triage"]["tiers"].reverse()  # make version 1 differ from the files
    await running.apply(policy)
    await put_raw(running, bad_version(running, 2))
    await wait_for(lambda: running["router"].config.last_error, message="the router to reject it")
    await running.stop("router")

    await running.start("router")

    assert running["router"].config_version == "1"


async def test_tier_order_change_takes_effect_on_the_next_invocation(running):
    client = await running.client()
    first = await client.invoke("support-triage", "hi")
    assert (first.status, first.provider) == (Status.SUCCESS, "openai-sim")

    policy = running.policy()
    policy["workflows"]["support-triage"]["tiers"].reverse()
    doc = await running.apply(policy)

    second = await client.invoke("support-triage", "hi")
    assert second.status is Status.SUCCESS
    assert (second.provider, second.model) == ("anthropic-sim", "claude-sim-sonnet")
    assert second.config_version == str(doc.version)
    assert [(a.tier, a.provider) for a in second.attempts] == [(0, "anthropic-sim")]


async def test_ceiling_change_takes_effect_on_the_next_invocation(running):
    client = await running.client()
    ok = await client.invoke("support-triage", "hi", max_tokens=100)
    assert ok.status is Status.SUCCESS

    policy = running.policy()
    policy["workflows"]["support-triage"]["budget"]["max_tokens_per_invocation"] = 50
    await running.apply(policy)

    refused = await client.invoke("support-triage", "hi", max_tokens=100)
    assert refused.status is Status.BUDGET_EXCEEDED
    assert refused.error.code == "budget_exceeded"
    assert refused.error.details[0]["ceiling"] == 50
    assert refused.attempts == []

"""Audit lag: events waiting in JetStream for the recorder, and the age of the oldest."""

from __future__ import annotations

import time
import uuid

import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.recorder.service import audit_lag
from shared import names
from shared.contracts import ProviderBlockEvent
from tests.support.helpers import ServiceProcess, infra_env, ops_get, sample
from tests.support.stack import wait_for

pytestmark = pytest.mark.timeout(60)


def block_event(env: str) -> ProviderBlockEvent:
    return ProviderBlockEvent(
        event_id=uuid.uuid4().hex,
        ts=time.time(),
        env=env,
        service="tests",
        config_version="1",
        provider="openai-sim",
        blocked=False,
        reason="lag probe",
    )


async def test_lag_counts_unrecorded_events_and_their_age_until_the_recorder_catches_up(stack):
    await stack.start("recorder")
    await stack.stop("recorder")  # its durable consumer stays; nothing reads it now
    nc = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    try:
        js = nc.jetstream()
        assert await audit_lag(js, stack.env) == (0, 0.0)
        published = time.time()
        for _ in range(3):
            event = block_event(stack.env)
            await js.publish(names.event(stack.env, event.kind.value), event.model_dump_json().encode())
        pending, age = await audit_lag(js, stack.env)
        assert pending == 3
        assert 0 <= age <= time.time() - published + 1.0  # server and test clocks are the same clock

        await stack.start("recorder", recorder={"lag_interval_s": 0.05})

        async def caught_up() -> bool:
            return await audit_lag(js, stack.env) == (0, 0.0)

        await wait_for(caught_up, message="the recorder to catch up", timeout=20)
        await wait_for(
            lambda: (
                sample("switchboard_audit_pending_events") == 0
                and sample("switchboard_audit_oldest_unrecorded_seconds") == 0
            ),
            message="the lag gauges to read zero",
        )
    finally:
        await nc.close()


async def test_a_recorder_process_says_on_healthz_what_its_metrics_count_and_how_far_behind_it_is(
    stack, tmp_path
):
    env = infra_env(stack.infra, SB_ENV=stack.env, SB_LAG_INTERVAL_S="0.2")
    recorder = await ServiceProcess("recorder", env, tmp_path).start()
    nc = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    try:
        await recorder.wait_ready()
        js = nc.jetstream()
        for _ in range(4):
            await js.publish(
                names.event(stack.env, "provider_block"), block_event(stack.env).model_dump_json().encode()
            )

        async def counted() -> dict | None:
            health = (await ops_get(recorder.port, "/healthz")).json()
            lag = health.get("audit_lag") or {}
            return health if health["events_recorded"] == 4 and lag.get("pending_events") == 0 else None

        health = await wait_for(counted, timeout=20, interval=0.1, message="four events recorded, no lag")
        metrics = (await ops_get(recorder.port, "/metrics")).text
        total = sum(
            s.value
            for family in text_string_to_metric_families(metrics)
            for s in family.samples
            if s.name == "switchboard_events_recorded_total"
        )
        assert total == health["events_recorded"] == 4
        assert health["events_dead_lettered"] == 0
        assert health["audit_lag"]["oldest_s"] == 0.0
        assert health["audit_lag"]["measured_s_ago"] < 5
    finally:
        await nc.close()
        await recorder.stop()

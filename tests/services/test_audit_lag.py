"""Audit lag: events waiting in JetStream for the recorder, and the age of the oldest."""

from __future__ import annotations

import time
import uuid

import nats
import pytest

from services.recorder.service import audit_lag
from shared import names
from shared.contracts import ProviderBlockEvent
from tests.support.helpers import sample
from tests.support.stack import wait_for

pytestmark = pytest.mark.timeout(60)


async def test_lag_counts_unrecorded_events_and_their_age_until_the_recorder_catches_up(stack):
    await stack.start("recorder")
    await stack.stop("recorder")  # its durable consumer stays; nothing reads it now
    nc = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    try:
        js = nc.jetstream()
        assert await audit_lag(js, stack.env) == (0, 0.0)
        published = time.time()
        for _ in range(3):
            event = ProviderBlockEvent(
                event_id=uuid.uuid4().hex,
                ts=time.time(),
                env=stack.env,
                service="tests",
                config_version="1",
                provider="openai-sim",
                blocked=False,
                reason="lag probe",
            )
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

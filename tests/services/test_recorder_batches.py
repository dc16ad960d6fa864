"""The recorder writes in batches without changing what the audit log holds: a batch written
again (a recorder killed after its commit and before its acks gets it redelivered) leaves one
row per event; a trail written as one batch or one event at a time gives the same rows; and a
stream that is not busy is still written many events per transaction."""

from __future__ import annotations

import time
import uuid

import asyncpg
import orjson
import pytest

from services.recorder import store
from services.recorder.service import audit_lag
from shared import codec, names
from shared.contracts import AttemptEvent, AttemptStartedEvent, Event, InvocationEvent
from tests.support.stack import cleanup_env, new_env, operator_connect, wait_for

pytestmark = pytest.mark.timeout(60)


def trail(env: str, invocation_id: str, t0: float) -> list[Event]:
    """One invocation as the gateway records it: the call started and finished, the invocation
    held for review, then answered (a second invocation event for the same id, later)."""
    common = {
        "env": env,
        "service": "gateway",
        "invocation_id": invocation_id,
        "workflow": "support-triage",
        "config_version": "3",
        "trace_id": uuid.uuid4().hex,
    }
    attempt = {"attempt_id": f"{invocation_id}-a0", "tier": 0, "provider": "openai-sim", "model": "m"}
    return [
        AttemptStartedEvent(**common, **attempt, event_id=uuid.uuid4().hex, ts=t0),
        AttemptEvent(
            **common, **attempt, event_id=uuid.uuid4().hex, ts=t0 + 0.01, outcome="ok", latency_ms=4.5
        ),
        InvocationEvent(**common, event_id=uuid.uuid4().hex, ts=t0 + 0.02, status="pending_review"),
        InvocationEvent(
            **common,
            event_id=uuid.uuid4().hex,
            ts=t0 + 0.03,
            status="success",
            provider="openai-sim",
            model="m",
            prompt_tokens=11,
            completion_tokens=7,
            latency_ms=5.25,
            cost_usd=0.000123,
        ),
    ]


async def rows(database_url: str, env: str) -> tuple[list[dict], list[dict]]:
    """(events, invocations) of an environment, without the columns that name it or say when
    the row was written."""
    conn = await asyncpg.connect(database_url)
    try:
        events = await conn.fetch("select * from events where env = $1 order by event_id", env)
        invocations = await conn.fetch("select * from invocations where env = $1 order by invocation_id", env)
    finally:
        await conn.close()

    def plain(row: asyncpg.Record) -> dict:
        body = orjson.loads(row["body"])
        del body["env"]
        return {k: v for k, v in row.items() if k not in ("env", "recorded_at")} | {"body": body}

    return [plain(r) for r in events], [plain(r) for r in invocations]


async def publish(infra, env: str, events: list[Event], *, dedupe: bool = True) -> None:
    """Publish events as the emitters do; without `dedupe`, JetStream stores a repeat again."""
    nc = await operator_connect(infra.nats_url)
    try:
        js = nc.jetstream()
        for e in events:
            headers = {"Nats-Msg-Id": e.event_id} if dedupe else None
            await js.publish(names.event(env, e.kind.value), codec.encode(e), headers=headers)
    finally:
        await nc.close()


async def caught_up(stack) -> bool:
    pending, _ = await audit_lag(stack["recorder"].bus.js, stack.env)
    return pending == 0


async def test_a_batch_delivered_again_after_its_commit_leaves_one_row_per_event(stack):
    events = [e for i in range(3) for e in trail(stack.env, f"inv-{i}", time.time() + i)]
    pool = await asyncpg.create_pool(stack.infra.database_url, min_size=1, max_size=1)
    try:  # what a recorder killed between its commit and its acks had written
        await store.write_batch(pool, events)
    finally:
        await pool.close()
    written = await rows(stack.infra.database_url, stack.env)
    await stack.start("recorder")

    await publish(stack.infra, stack.env, events)
    await publish(stack.infra, stack.env, events[:4], dedupe=False)  # one trail stored twice
    await wait_for(lambda: caught_up(stack), message="the recorder to acknowledge every event")

    events_rows, invocation_rows = await rows(stack.infra.database_url, stack.env)
    assert (events_rows, invocation_rows) == written
    assert sorted(r["event_id"] for r in events_rows) == sorted(e.event_id for e in events)
    assert [(r["invocation_id"], r["status"]) for r in invocation_rows] == [
        (f"inv-{i}", "success") for i in range(3)
    ]
    answered = invocation_rows[0]
    assert (answered["prompt_tokens"], answered["completion_tokens"], answered["latency_ms"]) == (11, 7, 5.25)
    assert answered["cost_usd"] == pytest.approx(0.000123)


async def test_a_trail_written_as_one_batch_or_one_event_at_a_time_gives_the_same_rows(infra):
    together, apart = new_env(), new_env()
    t0 = time.time()
    pool = await asyncpg.create_pool(infra.database_url, min_size=1, max_size=1)
    try:
        for env in (together, apart):
            events = [  # the same event ids in both environments
                e.model_copy(update={"event_id": f"{e.kind.value}-{e.ts}", "trace_id": "t"})
                for e in trail(env, "inv-1", t0)
            ]
            if env == together:
                await store.write_batch(pool, events)
            else:
                for e in events:
                    await store.write_batch(pool, [e])
        assert await rows(infra.database_url, together) == await rows(infra.database_url, apart)
        events_rows, invocation_rows = await rows(infra.database_url, together)
        assert [r["kind"] for r in sorted(events_rows, key=lambda r: r["ts"])] == [
            "attempt_started",
            "attempt",
            "invocation",
            "invocation",
        ]
        assert [r["status"] for r in invocation_rows] == ["success"]
    finally:
        await pool.close()
        for env in (together, apart):
            await cleanup_env(infra, env)


async def test_a_burst_after_a_quiet_moment_is_written_in_one_transaction(stack):
    await stack.start("recorder", recorder={"batch_wait_s": 5.0})
    first = trail(stack.env, "inv-first", time.time())[:1]
    await publish(stack.infra, stack.env, first)
    await wait_for(lambda: caught_up(stack), message="the first event recorded")

    burst = [e for i in range(5) for e in trail(stack.env, f"inv-{i}", time.time())]
    await publish(stack.infra, stack.env, burst)  # while the recorder waits for more
    await wait_for(lambda: caught_up(stack), message="the burst recorded")

    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        stamps = await conn.fetch(
            "select distinct recorded_at from events where env = $1 and event_id = any($2::text[])",
            stack.env,
            [e.event_id for e in burst],
        )
        count = await conn.fetchval("select count(*) from events where env = $1", stack.env)
    finally:
        await conn.close()
    assert len(stamps) == 1  # now() is the transaction's start: one transaction wrote them all
    assert count == len(first) + len(burst)

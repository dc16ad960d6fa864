"""One event the audit log cannot hold never stalls it: it is kept in dead_letters with its
reason and raw bytes, counted, listed by `sbctl dead-letters`, and every event after it is
written."""

from __future__ import annotations

import time
import uuid

import asyncpg
import nats
import orjson

from services.recorder import deadletter
from shared import names
from shared.contracts import Status
from tests.support.fallback import sbctl_json
from tests.support.helpers import run_sbctl, sample
from tests.support.stack import wait_for


def poison_event(env: str) -> bytes:
    """An invocation event whose agent and metadata hold NUL, which PostgreSQL text and jsonb refuse."""
    return orjson.dumps(
        {
            "event_id": uuid.uuid4().hex,
            "kind": "invocation",
            "ts": time.time(),
            "env": env,
            "service": "gateway",
            "invocation_id": "poisoned-1",
            "workflow": "support-triage",
            "agent": "bad\x00agent",
            "status": "success",
            "config_version": "1",
            "metadata": {"k": "v\x00"},
        }
    )


async def dead_letter_rows(stack) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        return await conn.fetch(
            "select subject, event_id, kind, reason, raw from dead_letters where env = $1 order by id",
            stack.env,
        )
    finally:
        await conn.close()


async def invocation_row(stack, invocation_id: str):
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        return await conn.fetchrow(
            "select status from invocations where env = $1 and invocation_id = $2", stack.env, invocation_id
        )
    finally:
        await conn.close()


async def test_a_poison_event_is_dead_lettered_and_the_events_after_it_are_written(running):
    rejected = sample("switchboard_events_dead_lettered_total", reason="rejected")
    unreadable = sample("switchboard_events_dead_lettered_total", reason="unreadable")
    client = await running.client()
    before = await client.invoke("support-triage", "before the poison")
    nc = await nats.connect(running.infra.nats_url, **running.infra.nats_options)
    try:
        js = nc.jetstream()
        poison = poison_event(running.env)
        await js.publish(names.event(running.env, "invocation"), poison)
        await js.publish(names.event(running.env, "attempt"), b"\xff not json")
    finally:
        await nc.close()
    after = await client.invoke("support-triage", "after the poison")
    assert {before.status, after.status} == {Status.SUCCESS}

    for result in (before, after):
        await wait_for(lambda r=result: invocation_row(running, r.invocation_id), message="audit rows")
    rows = await wait_for(lambda: _two(dead_letter_rows(running)), message="both bad events in dead_letters")
    by_kind = {r["kind"]: r for r in rows}
    assert bytes(by_kind["invocation"]["raw"]) == poison
    assert by_kind["invocation"]["event_id"] == orjson.loads(poison)["event_id"]
    assert "0x00" in by_kind["invocation"]["reason"] or "\\u0000" in by_kind["invocation"]["reason"]
    assert bytes(by_kind[None]["raw"]) == b"\xff not json"
    assert by_kind[None]["reason"].startswith("unreadable")
    assert await invocation_row(running, "poisoned-1") is None
    assert sample("switchboard_events_dead_lettered_total", reason="rejected") == rejected + 1
    assert sample("switchboard_events_dead_lettered_total", reason="unreadable") == unreadable + 1

    listed = await sbctl_json(running, "dead-letters")
    assert listed["count"] == 2
    assert {d["event_id"] for d in listed["dead_letters"]} == {by_kind["invocation"]["event_id"], None}
    code, out, _ = await run_sbctl(running.infra, "dead-letters", "--env", running.env)
    assert code == 0
    assert out.splitlines()[0] == f"2 dead letter(s) in env {running.env}"


async def _two(rows_coro):
    rows = await rows_coro
    return rows if len(rows) == 2 else None


async def test_a_write_that_lost_a_race_is_retried_not_dead_lettered(infra):
    """A serialization failure (like a deadlock) is PostgreSQL asking for a retry: the event in
    that write is fine and must never become a dead letter."""
    table = f"race_{uuid.uuid4().hex[:8]}"
    a, b = await asyncpg.connect(infra.database_url), await asyncpg.connect(infra.database_url)
    try:
        await a.execute(f"create table {table} (k int primary key, v int); insert into {table} values (1, 0)")
        ta, tb = a.transaction(isolation="serializable"), b.transaction(isolation="serializable")
        await ta.start()
        await tb.start()
        await a.fetchval(f"select v from {table} where k = 1")
        await b.fetchval(f"select v from {table} where k = 1")
        await a.execute(f"update {table} set v = 1 where k = 1")
        await ta.commit()
        try:
            await b.execute(f"update {table} set v = 2 where k = 1")
        except asyncpg.PostgresError as exc:
            lost = exc
        await tb.rollback()
    finally:
        await a.execute(f"drop table if exists {table}")
        await a.close()
        await b.close()

    assert isinstance(lost, asyncpg.exceptions.SerializationError)
    assert deadletter.unavailable(lost)
    assert deadletter.unavailable(asyncpg.exceptions.DeadlockDetectedError("deadlock detected"))

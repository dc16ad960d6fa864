"""Audit retention: day partitions per environment, dropped whole once past retention.

Rows are backdated through the recorder's own write path; `sbctl trace` reads them back through
the running recorder, exactly as an operator would.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.recorder import store
from services.recorder.service import RecorderService
from shared import migrate
from shared.contracts import AttemptEvent, InvocationEvent
from tests.support.helpers import run_sbctl
from tests.support.stack import cleanup_env, new_env

pytestmark = pytest.mark.timeout(90)


def trail(env: str, invocation_id: str, at: datetime) -> list:
    """An invocation and one attempt, as the gateway emits them, `at` a past moment."""
    ts = at.timestamp()
    common = {
        "env": env,
        "service": "gateway",
        "invocation_id": invocation_id,
        "workflow": "support-triage",
        "config_version": "1",
    }
    return [
        AttemptEvent(
            **common, event_id=uuid.uuid4().hex, ts=ts, tier=0, provider="openai-sim", model="m", outcome="ok"
        ),
        InvocationEvent(**common, event_id=uuid.uuid4().hex, ts=ts + 0.01, status="success"),
    ]


async def trace(stack, invocation_id: str) -> dict:
    code, out, err = await run_sbctl(stack.infra, "trace", invocation_id, "--env", stack.env, "--json")
    assert code in (0, 1), err
    body = json.loads(out)
    return {"found": False} if code == 1 and body["error"]["code"] == "not_found" else body


async def partitions(conn: asyncpg.Connection, env: str) -> set[str]:
    rows = await conn.fetch(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
        "where i.inhparent in (to_regclass(audit_table('events', $1)), "
        "to_regclass(audit_table('invocations', $1)))",
        env,
    )
    return {r["relname"] for r in rows}


async def test_trails_past_90_days_and_rows_past_180_days_are_dropped_for_this_env_only(stack):
    await stack.start("recorder")
    recorder = stack["recorder"]
    now = datetime.now(UTC)
    other = new_env()
    ages = {"d89": 89, "d91": 91, "d179": 179, "d181": 181}
    ids = {label: f"inv-{label}-{uuid.uuid4().hex[:6]}" for label in ages}
    try:
        for label, days in ages.items():
            at = now - timedelta(days=days)
            await store.write_batch(recorder.db, trail(stack.env, ids[label], at))
            await store.write_batch(recorder.db, trail(other, ids[label], at))
        for label in ages:  # all recorded before retention runs
            assert (await trace(stack, ids[label]))["found"] is True

        done = await recorder.retain()

        def day(days: int) -> str:
            return (now - timedelta(days=days)).strftime("%Y%m%d")

        events_t = await _table(recorder, "events", stack.env)
        invocations_t = await _table(recorder, "invocations", stack.env)
        expected = [f"{events_t}_{day(n)}" for n in (91, 179, 181)] + [f"{invocations_t}_{day(181)}"]
        assert sorted(done.dropped) == sorted(expected)
        day89 = await trace(stack, ids["d89"])
        assert day89["found"] is True
        assert day89["invocation"]["status"] == "success"
        assert [e["kind"] for e in day89["events"]] == ["attempt", "invocation"]
        day91 = await trace(stack, ids["d91"])
        assert day91["found"] is True and day91["events"] == []  # the trail is gone...
        assert day91["invocation"]["invocation_id"] == ids["d91"]  # ...the invocation row is kept
        day179 = await trace(stack, ids["d179"])
        assert day179["invocation"] is not None and day179["events"] == []
        day181 = await trace(stack, ids["d181"])
        assert day181["found"] is False

        conn = await asyncpg.connect(stack.infra.database_url)
        try:
            mine = await partitions(conn, stack.env)
            theirs = await partitions(conn, other)
            rows_left = await conn.fetchval("select count(*) from events where env = $1", other)
        finally:
            await conn.close()
        today = now.date()
        ahead = {(today + timedelta(days=n)).strftime("%Y%m%d") for n in range(3)}
        assert {name[-8:] for name in mine if name.startswith("events_")} >= ahead  # created ahead
        assert f"{events_t}_{day(89)}" in mine and f"{invocations_t}_{day(179)}" in mine
        assert rows_left == 2 * len(ages)  # the other environment lost nothing
        assert len(theirs) == 2 * len(ages)
    finally:
        await cleanup_env(stack.infra, other)


async def _table(recorder, table: str, env: str) -> str:
    return await recorder.db.fetchval("select audit_table($1, $2)", table, env)


async def test_two_recorders_run_retention_at_once_while_writing(stack):
    await stack.start("recorder")
    first = stack["recorder"]
    second = await RecorderService(stack.settings("recorder")).start()
    try:
        now = datetime.now(UTC)
        expired = [now - timedelta(days=d) for d in range(92, 100)]
        for at in [*expired, now - timedelta(days=89)]:
            await store.write_batch(first.db, trail(stack.env, f"inv-{uuid.uuid4().hex[:8]}", at))

        async def writes() -> int:
            for _ in range(20):
                await store.write_batch(second.db, trail(stack.env, f"inv-{uuid.uuid4().hex[:8]}", now))
            return 20

        passes = await asyncio.gather(
            *[r.retain() for _ in range(3) for r in (first, second)], writes(), first.retain()
        )
        dropped = [name for p in passes if not isinstance(p, int) for name in p.dropped]
        events_table = await _table(first, "events", stack.env)
        expected = {f"{events_table}_{at.strftime('%Y%m%d')}" for at in expired}
        assert expected <= set(dropped)
        assert len(dropped) == len(set(dropped))  # every partition dropped exactly once
        counts = await first.db.fetchrow(
            "select count(*) filter (where ts > now() - interval '1 day') as fresh, "
            "count(*) filter (where ts < now() - interval '88 days') as old from events where env = $1",
            stack.env,
        )
        assert (counts["fresh"], counts["old"]) == (40, 2)  # every write landed; day 89 kept
    finally:
        await second.shutdown()


async def test_migration_moves_unpartitioned_rows_into_day_partitions(infra):
    name = f"sb_migtest_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(infra.database_url)
    await admin.execute(f'create database "{name}"')
    url = infra.database_url.rsplit("/", 1)[0] + "/" + name
    try:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute((migrate.SERVICES_DIR / "recorder/migrations/0001_audit_log.sql").read_text())
            await conn.execute(
                "insert into events (env, event_id, kind, ts, invocation_id, body) values "
                "('prod', 'e1', 'invocation', now() - interval '3 days', 'i1', '{}'), "
                "('prod', 'e2', 'attempt', now(), 'i2', '{}'), "
                "('staging', 'e3', 'attempt', now(), 'i3', '{}');"
                "insert into invocations (env, invocation_id, ts, status, body) values "
                "('prod', 'i1', now() - interval '3 days', 'success', '{}')"
            )
            await migrate.apply(url, verbose=False)
            rows = await conn.fetch(
                "select tableoid::regclass::text as part, event_id from events order by event_id"
            )
            inv = await conn.fetch("select tableoid::regclass::text as part, status from invocations")
        finally:
            await conn.close()
    finally:
        await admin.execute(f'drop database "{name}" with (force)')
        await admin.close()
    three_days_ago = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y%m%d")
    assert [r["event_id"] for r in rows] == ["e1", "e2", "e3"]
    assert rows[0]["part"].startswith("events_prod_") and rows[0]["part"].endswith(three_days_ago)
    assert rows[2]["part"].startswith("events_staging_")
    assert [(r["status"], r["part"][-8:]) for r in inv] == [("success", three_days_ago)]

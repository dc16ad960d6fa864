"""PostgreSQL unreachable for the recorder: the events wait in JetStream, nothing is
dead-lettered for it, and every answered invocation is in the audit log once PostgreSQL is back.
PostgreSQL is reached through a proxy the test cuts, never by stopping the machine's server."""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from shared.contracts import Status
from tests.support.helpers import sample
from tests.support.stack import wait_for
from tests.support.tcpproxy import TcpProxy

OUTAGE_S = float(os.environ.get("SB_TEST_DB_OUTAGE_S", "8"))


@pytest.fixture
async def db_proxy(infra):
    parts = urlsplit(infra.database_url)
    proxy = await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
    yield proxy, urlunsplit(parts._replace(netloc=netloc))
    await proxy.cut()


async def audit(stack, table: str, ids: list[str] | None = None) -> int:
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        if table == "dead_letters":
            return await conn.fetchval("select count(*) from dead_letters where env = $1", stack.env)
        return await conn.fetchval(
            "select count(*) from invocations where env = $1 and invocation_id = any($2::text[])",
            stack.env,
            ids,
        )
    finally:
        await conn.close()


@pytest.mark.timeout(OUTAGE_S + 90)
async def test_answered_invocations_are_recorded_after_a_database_outage(stack, db_proxy):
    proxy, proxied_url = db_proxy
    await stack.start(recorder={"database_url": proxied_url})
    await stack.start("router", "budget", "gateway")
    client = await stack.client()
    assert (await client.invoke("support-triage", "before", invocation_id="db-0")).status is Status.SUCCESS
    await wait_for(lambda: audit(stack, "invocations", ["db-0"]), message="the first row")
    dead_before = sample("switchboard_events_dead_lettered_total", reason="rejected")

    await proxy.cut()
    ids = [f"db-{i}" for i in range(1, 6)]
    results = [await client.invoke("support-triage", i, invocation_id=i) for i in ids]
    assert {r.status for r in results} == {Status.SUCCESS}
    await asyncio.sleep(OUTAGE_S)
    assert await audit(stack, "invocations", ids) == 0
    await proxy.start()

    await wait_for(lambda: _equals(audit(stack, "invocations", ids), 5), timeout=60, message="five rows")
    assert await audit(stack, "dead_letters") == 0
    assert sample("switchboard_events_dead_lettered_total", reason="rejected") == dead_before


async def _equals(coro, n: int) -> bool:
    return await coro == n

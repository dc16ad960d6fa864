"""What the recorder wrote to the audit log, read back for assertions."""

from __future__ import annotations

import asyncpg
import orjson


async def recorded_events(stack, kind: str, invocation_id: str) -> list[dict]:
    """The events of one kind that name an invocation, as published (empty until recorded)."""
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        rows = await conn.fetch(
            "select body from events where env = $1 and kind = $2 and invocation_id = $3",
            stack.env,
            kind,
            invocation_id,
        )
    finally:
        await conn.close()
    return [orjson.loads(r["body"]) for r in rows]


async def invocation_rows(stack, invocation_id: str) -> list[asyncpg.Record]:
    """The audit log's invocation rows for an id (one per answered invocation; empty until then)."""
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        return await conn.fetch(
            "select * from invocations where env = $1 and invocation_id = $2", stack.env, invocation_id
        )
    finally:
        await conn.close()

"""Dead letters: an event the audit log cannot hold is kept aside, with its reason and its raw
bytes, and acknowledged, so the events after it are written.

A batch write that fails is retried one event at a time. An event whose own write fails for a
reason other than PostgreSQL being unreachable (a NUL in a string, a field of the wrong type)
is a dead letter; when PostgreSQL is unreachable nothing is dead-lettered and the batch waits.
"""

from __future__ import annotations

import asyncio

import asyncpg
from nats.aio.msg import Msg

from shared.contracts import Event

INSERT = """
insert into dead_letters (env, subject, event_id, kind, reason, raw)
values ($1, $2, $3, $4, $5, $6)
"""

# PostgreSQL or the way to it is down, full or shutting down, or the write lost a race with
# another transaction (deadlock, serialization failure): wait and retry, never dead-letter.
UNAVAILABLE = (
    asyncpg.exceptions.TransactionRollbackError,
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.PostgresSystemError,
)


def unavailable(exc: BaseException) -> bool:
    return isinstance(exc, UNAVAILABLE)


def _text(value: object, limit: int = 200) -> str | None:
    """A column-safe string: PostgreSQL text cannot hold NUL."""
    if not isinstance(value, str):
        return None
    return value.replace("\x00", "\\u0000")[:limit]


async def keep(pool: asyncpg.Pool, env: str, msg: Msg, event: Event | None, reason: str) -> None:
    """Store the message as received, with what could be read of it and why it was refused."""
    await pool.execute(
        INSERT,
        env,
        _text(msg.subject) or "",
        _text(event.event_id) if event else None,
        event.kind.value if event else None,
        _text(reason, 2000),
        msg.data,
    )


async def recent(pool: asyncpg.Pool, env: str, limit: int) -> tuple[int, list[dict]]:
    """How many dead letters the environment holds, and the newest `limit` of them."""
    async with pool.acquire() as conn:
        total = await conn.fetchval("select count(*) from dead_letters where env = $1", env)
        rows = await conn.fetch(
            "select id, failed_at, subject, event_id, kind, reason, raw from dead_letters "
            "where env = $1 order by id desc limit $2",
            env,
            limit,
        )
    return int(total), [
        {
            "id": r["id"],
            "failed_at": r["failed_at"].timestamp(),
            "subject": r["subject"],
            "event_id": r["event_id"],
            "kind": r["kind"],
            "reason": r["reason"],
            "raw": bytes(r["raw"]).decode("utf-8", errors="backslashreplace"),
        }
        for r in rows
    ]

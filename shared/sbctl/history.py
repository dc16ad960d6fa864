"""The policy history of record in PostgreSQL, written by sbctl before a version is distributed.

`publish` takes a per-environment advisory lock, imports whatever KV holds that the history
lacks (an environment's existing versions, once), writes the new row, and only then writes the
version to KV; the row is marked `distributed` when KV has it, or `failed` when the write did
not happen. If the row cannot be written, nothing is distributed. NATS KV stays the channel
that every replica watches; it keeps only the last 64 versions, this table keeps them all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import orjson

from shared.live_config import ConfigStore, VersionDoc, read_version
from shared.policy import document_checksum
from shared.sbctl.context import Operator
from switchboard_sdk import errors

DEFAULT_SOAK_S = 600  # how long a version must have run where it is promoted from
COLUMNS = (
    "env, version, applied_at, applied_by, by_source, action, reason, forced, promoted_from_env,"
    " promoted_from_version, rollback_of, checksum, source, state"
)


@dataclass(frozen=True)
class Change:
    """What an operator asks to become the next version, and on what grounds."""

    document: dict  # the policy as written, variables unexpanded
    who: Operator
    action: str  # apply | rollback | promote
    reason: str
    source: str = ""
    forced: bool = False
    promoted_from_env: str | None = None
    promoted_from_version: int | None = None
    rollback_of: int | None = None


async def open_db(database_url: str) -> asyncpg.Connection:
    """One connection, or `Unavailable` within a few seconds (never a hang, never a traceback)."""
    try:
        return await asyncpg.connect(database_url, timeout=3.0)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise errors.Unavailable(
            f"cannot write or read the policy history in PostgreSQL: {type(exc).__name__}: {exc}"
        ) from exc


def _lock_key(env: str) -> str:
    return f"policy_history:{env}"


async def reconcile(conn: asyncpg.Connection, store: ConfigStore) -> int:
    """Import every KV version the history lacks, and mark rows KV holds as distributed.

    An environment that existed before the history is imported this way the first time sbctl
    touches it; afterwards only a version written to KV by some other path is picked up."""
    env = store.env
    imported = 0
    for entry in await store.entries():
        doc = read_version(entry.value)
        if doc is None:
            continue
        status = await conn.execute(
            """insert into policy_history (env, version, applied_at, applied_by, by_source, action,
                   reason, checksum, source, policy, state)
               values ($1, $2, $3, $4, 'imported', 'import', '', $5, $6, $7::jsonb, 'distributed')
               on conflict (env, version) do nothing""",
            env,
            doc.version,
            _ts(doc.applied_at),
            doc.applied_by,
            doc.checksum,
            doc.source,
            orjson.dumps(doc.policy).decode(),
        )
        if status.endswith(" 1"):
            imported += 1
        else:
            await conn.execute(
                "update policy_history set state = 'distributed'"
                " where env = $1 and version = $2 and state = 'recorded' and checksum = $3",
                env,
                doc.version,
                doc.checksum,
            )
    return imported


async def publish(conn: asyncpg.Connection, store: ConfigStore, change: Change) -> VersionDoc:
    """Record `change` as the next version, then distribute it; raise if either step fails."""
    env = store.env
    await conn.execute("select pg_advisory_lock(hashtext($1))", _lock_key(env))
    try:
        await reconcile(conn, store)
        current = await store.current()
        last = await conn.fetchval("select coalesce(max(version), 0) from policy_history where env = $1", env)
        version = max(last, current.version if current else 0) + 1
        doc = VersionDoc(
            version=version,
            applied_at=time.time(),
            applied_by=change.who.name,
            checksum=document_checksum(change.document),
            source=change.source,
            policy=change.document,
            action=change.action,
            reason=change.reason,
        )
        await conn.execute(
            """insert into policy_history (env, version, applied_at, applied_by, by_source, action, reason,
                   forced, promoted_from_env, promoted_from_version, rollback_of, checksum, source, policy)
               values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb)""",
            env,
            version,
            _ts(doc.applied_at),
            change.who.name,
            change.who.source,
            change.action,
            change.reason,
            change.forced,
            change.promoted_from_env,
            change.promoted_from_version,
            change.rollback_of,
            doc.checksum,
            change.source,
            orjson.dumps(doc.policy).decode(),
        )
        try:
            await store.put(doc)
        except BaseException:
            await _mark(conn, env, version, "failed")
            raise
        # From here the version is live: a failure to mark it is repaired by the next reconcile.
        await _mark(conn, env, version, "distributed")
        return doc
    finally:
        await conn.execute("select pg_advisory_unlock(hashtext($1))", _lock_key(env))


async def versions(conn: asyncpg.Connection, env: str, limit: int | None = None) -> list[dict]:
    """Every version of `env`, newest first, with its policy."""
    rows = await conn.fetch(
        f"select {COLUMNS}, policy from policy_history where env = $1 order by version desc limit $2",
        env,
        limit,
    )
    return [_row(r) for r in rows]


async def version(conn: asyncpg.Connection, env: str, number: int) -> dict | None:
    row = await conn.fetchrow(
        f"select {COLUMNS}, policy from policy_history where env = $1 and version = $2", env, number
    )
    return _row(row) if row else None


async def live_at(conn: asyncpg.Connection, env: str, when: datetime) -> tuple[dict | None, dict | None]:
    """The version that was live at `when` (the newest distributed one applied by then), and the
    one that replaced it, if any."""
    row = await conn.fetchrow(
        f"select {COLUMNS}, policy from policy_history where env = $1 and state = 'distributed'"
        " and applied_at <= $2 order by applied_at desc, version desc limit 1",
        env,
        when,
    )
    following = await conn.fetchrow(
        f"select {COLUMNS}, policy from policy_history where env = $1 and state = 'distributed'"
        " and applied_at > $2 order by applied_at, version limit 1",
        env,
        when,
    )
    return (_row(row) if row else None), (_row(following) if following else None)


async def _mark(conn: asyncpg.Connection, env: str, version: int, state: str) -> None:
    try:
        await conn.execute(
            "update policy_history set state = $3 where env = $1 and version = $2", env, version, state
        )
    except (asyncpg.PostgresError, OSError):
        pass


def _row(record) -> dict:
    row = dict(record)
    if isinstance(row.get("policy"), str):
        row["policy"] = orjson.loads(row["policy"])
    return row


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


async def env_settings(conn: asyncpg.Connection, env: str) -> dict:
    """An environment's governance settings; an environment never configured is unprotected
    with the default soak time."""
    row = await conn.fetchrow("select * from policy_envs where env = $1", env)
    return dict(row) if row else {"env": env, "protected": False, "soak_s": DEFAULT_SOAK_S}


async def set_env(
    conn: asyncpg.Connection, env: str, *, protected: bool, soak_s: int, who: Operator, reason: str
) -> None:
    await conn.execute(
        """insert into policy_envs (env, protected, soak_s, changed_by, changed_at, reason)
           values ($1, $2, $3, $4, now(), $5)
           on conflict (env) do update set protected = excluded.protected, soak_s = excluded.soak_s,
               changed_by = excluded.changed_by, changed_at = now(), reason = excluded.reason""",
        env,
        protected,
        soak_s,
        who.name,
        reason,
    )


async def live(conn: asyncpg.Connection, env: str) -> dict | None:
    """The version live in `env` now, from the history of record."""
    row = await conn.fetchrow(
        f"select {COLUMNS}, policy from policy_history where env = $1 and state = 'distributed'"
        " order by version desc limit 1",
        env,
    )
    return _row(row) if row else None


async def guard(conn: asyncpg.Connection, env: str, forced: bool) -> bool:
    """Refuse a direct apply to a protected environment unless forced; True when the guard was
    overridden (recorded with the version and shown by `config history`)."""
    rules = await env_settings(conn, env)
    if not rules["protected"]:
        return False
    if not forced:
        raise errors.Refused(
            f"env {env} is protected: promote a version that ran where it soaked"
            " (sbctl config promote), or override with --force --reason"
        )
    return True

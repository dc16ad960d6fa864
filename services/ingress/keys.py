"""API keys of the HTTP ingress: issued, listed and revoked by operators (over NATS, from sbctl),
looked up on every request. A key is `sbk_` and 43 URL-safe characters; PostgreSQL keeps only its
SHA-256. Lookups are cached for `cache_s` so that the request path does not wait on PostgreSQL;
a revocation is seen by the replica that made it at once and by the others within `cache_s`."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid

import asyncpg

from shared.contracts import IngressKey
from switchboard_sdk import errors

KEY_PREFIX = "sbk_"
SHOWN_PREFIX = 12  # characters of a key kept in clear, to tell keys apart in a listing


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def wire(row: asyncpg.Record, key: str | None = None) -> IngressKey:
    return IngressKey(
        key_id=row["key_id"],
        agent=row["agent"],
        prefix=row["prefix"],
        created_at=row["created_at"].timestamp(),
        created_by=row["created_by"],
        reason=row["reason"],
        revoked_at=row["revoked_at"].timestamp() if row["revoked_at"] else None,
        revoked_by=row["revoked_by"],
        revoke_reason=row["revoke_reason"],
        key=key,
    )


class Keys:
    def __init__(self, pool: asyncpg.Pool, env: str, cache_s: float) -> None:
        self.pool = pool
        self.env = env
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, str | None]] = {}  # hash -> (expires, agent or None)

    async def agent_of(self, key: str) -> str:
        """The agent a key acts as; `Unauthorized` for an unknown or revoked key."""
        digest = key_hash(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is None or cached[0] < now:
            try:
                agent = await self.pool.fetchval(
                    "select agent from ingress_keys where env = $1 and key_hash = $2 and revoked_at is null",
                    self.env,
                    digest,
                )
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                raise errors.Unavailable(f"API keys cannot be checked: {type(exc).__name__}") from exc
            if len(self._cache) > 10_000:  # unknown keys must not grow it without bound
                self._cache.clear()
            cached = self._cache[digest] = (now + self.cache_s, agent)
        if cached[1] is None:
            raise errors.Unauthorized("the API key is unknown or revoked")
        return cached[1]

    async def add(self, agent: str, by: str, reason: str) -> IngressKey:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = await self.pool.fetchrow(
            "insert into ingress_keys (env, key_id, key_hash, prefix, agent, created_by, reason)"
            " values ($1, $2, $3, $4, $5, $6, $7) returning *",
            self.env,
            "key_" + uuid.uuid4().hex[:12],
            key_hash(key),
            key[:SHOWN_PREFIX],
            agent,
            by,
            reason,
        )
        return wire(row, key)

    async def revoke(self, key_id: str, by: str, reason: str) -> IngressKey:
        row = await self.pool.fetchrow(
            "update ingress_keys set revoked_at = now(), revoked_by = $3, revoke_reason = $4"
            " where env = $1 and key_id = $2 and revoked_at is null returning *",
            self.env,
            key_id,
            by,
            reason,
        )
        if row is None:
            raise errors.NotFound(f"no active API key {key_id!r}")
        self._cache.pop(row["key_hash"], None)
        return wire(row)

    async def list(self, include_revoked: bool) -> list[IngressKey]:
        rows = await self.pool.fetch(
            "select * from ingress_keys where env = $1 and ($2 or revoked_at is null)"
            " order by agent, created_at",
            self.env,
            include_revoked,
        )
        return [wire(r) for r in rows]

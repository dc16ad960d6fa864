"""Switchboard needs Redis 7.0 or later, and says so at start-up rather than failing later.

The gateway claims an invocation id with `SET key value NX GET PX ms` (NX and GET together:
7.0) and keeps its claims alive with `PEXPIRE key ms GT` (7.0). On an older server both are
syntax errors, which would turn every claim into "idempotency unavailable"; so every service
that uses Redis checks the server's version when it starts and refuses to run on an older one.
A Redis that does not answer at start-up (or an ACL user that may not run INFO) is not checked:
the service starts, degraded as configured for a Redis outage, and says so in a warning.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis import exceptions as rx

from switchboard_sdk import errors

log = logging.getLogger("switchboard.service")
MINIMUM = (7, 0)


def parse(version: str) -> tuple[int, ...]:
    """`7.0.15` as (7, 0, 15); what cannot be read counts as 0."""
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


async def require_supported(redis: aioredis.Redis) -> str | None:
    """The server's version; raises `UnsupportedDependency` when it is older than 7.0, returns
    None (after a warning) when the server cannot be asked now."""
    try:
        info = await redis.info("server")
    except (rx.ConnectionError, rx.TimeoutError, rx.NoPermissionError) as exc:
        log.warning("Redis version not checked: Redis does not answer INFO", extra={"error": repr(exc)})
        return None
    version = str(info.get("redis_version", "unknown"))
    if parse(version) < MINIMUM:
        raise errors.UnsupportedDependency(
            f"Redis {version} is too old: Switchboard needs Redis {'.'.join(map(str, MINIMUM))} or later"
            " (SET with NX and GET, PEXPIRE GT)"
        )
    return version

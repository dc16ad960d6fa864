"""In-flight markers kept alive by their holder (services/gateway/leases.py), against a real Redis:
a refresh extends every held marker in one pipeline, never shortens a stored reply, never brings
back a deleted marker, and stops at the holder's worst case."""

from __future__ import annotations

from services.gateway.leases import Leases
from shared import keys

TTL_S = 2.0


async def test_a_refresh_extends_held_markers_and_leaves_everything_else_alone(redis, env_name):
    leases = Leases(redis, TTL_S)
    held, stored, deleted, other = (
        keys.idempotency(env_name, n) for n in ("held", "stored", "deleted", "other")
    )
    for key in (held, stored, deleted, other):
        await redis.set(key, b"marker", px=100)
        leases.hold(key, max_s=60)
    leases.drop(other)
    await redis.set(stored, b"reply", ex=86400)  # finished meanwhile: kept for a day
    await redis.delete(deleted)  # forgotten meanwhile

    await leases.refresh()

    assert 1000 < await redis.pttl(held) <= TTL_S * 1000
    assert await redis.pttl(stored) > 86_000_000
    assert await redis.exists(deleted) == 0
    assert await redis.pttl(other) <= 100


async def test_a_marker_is_refreshed_for_at_most_its_holders_worst_case(redis, env_name):
    leases = Leases(redis, TTL_S)
    key = keys.idempotency(env_name, "stuck")
    await redis.set(key, b"marker", px=100)
    leases.hold(key, max_s=0)  # past its worst case at once: let lapse

    await leases.refresh()

    assert await redis.pttl(key) <= 100

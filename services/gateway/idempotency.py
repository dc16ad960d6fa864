"""Idempotency, as payment APIs do it: the invocation id is the key, bound to a fingerprint of
the whole request (caller, workflow, session, messages, parameters, metadata).

The same id with the same request gets the first reply and nothing else happens; the same id
with any other request is refused with `idempotency_conflict`, so a reply is only ever replayed
to the request that produced it. One Redis round trip (`SET NX GET`) decides, before anything
is reserved or routed. The finished reply replaces the in-flight marker *before* it is sent:
a gateway killed after answering leaves a stored reply, never an id that a retry would run
again. The in-flight marker is a lease (`leases.py`): kept alive while this gateway works on
the id, lapsing within `claim_ttl_s` once it dies, so that a retry of a call a dead gateway
held runs again seconds later. It is kept for at most the invocation's worst case, counted again
at every chunk a stream relays (`keeper`): a tier's timeout bounds the wait for a stream's next
chunk, not the stream, so a long stream would otherwise lose its claim while it still runs.

When Redis does not take the claim (down, refusing writes), the invocation still runs without
de-duplication: a retry of it may run again. That degradation is explicit: a warning naming the
invocation and `switchboard_idempotency_unavailable_total{operation="claim"}`; a reply that cannot
be stored counts under `operation="store"` (docs/degradation.md). A workflow that must not run
unmetered is `budget.on_unavailable: fail_closed`, and is then refused by the budget, which
needs the same Redis.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.gateway.leases import Leases
from shared import keys
from shared.contracts import InvokeRequest
from shared.telemetry import metrics
from switchboard_sdk import errors

log = logging.getLogger("switchboard.gateway")
RESULT_TTL_S = 24 * 3600
FINGERPRINT_LEN = 32  # sha256 digest; the stored value is the digest, then the reply (if finished)


class Replay(Exception):
    """The invocation id already finished with this request: answer with the stored reply."""

    def __init__(self, stored: bytes) -> None:
        super().__init__("replay")
        self.stored = stored


def fingerprint(req: InvokeRequest) -> bytes:
    """A digest of everything the caller asked for, in a canonical form."""
    canonical = orjson.dumps(req.model_dump(mode="json", exclude_none=True), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).digest()


class Idempotency:
    def __init__(self, redis: aioredis.Redis, env: str, leases: Leases) -> None:
        self.redis = redis
        self.env = env
        self.leases = leases

    async def begin(self, req: InvokeRequest, max_in_flight_s: float) -> bytes | None:
        """Claim the id for as long as this process works on it (at most `max_in_flight_s`);
        returns the request's fingerprint (None when Redis is unreachable). Raises `Replay`,
        `DuplicateInFlight` or `IdempotencyConflict` when it was claimed before."""
        digest = fingerprint(req)
        key = keys.idempotency(self.env, req.invocation_id)
        try:
            stored = await self.redis.set(key, digest, nx=True, get=True, px=self.leases.ttl_ms)
        except RedisError as exc:
            metrics.IDEMPOTENCY_UNAVAILABLE.labels("claim").inc()
            log.warning(
                "idempotency unavailable: running without de-duplication",
                extra={"error": repr(exc), "invocation_id": req.invocation_id},
            )
            return None
        if stored is None:
            self.leases.hold(key, max_in_flight_s)
            return digest
        if stored[:FINGERPRINT_LEN] != digest:
            raise errors.IdempotencyConflict(
                f"invocation id {req.invocation_id} was used for a different request; use a new id"
            )
        if len(stored) == FINGERPRINT_LEN:
            raise errors.DuplicateInFlight(f"invocation {req.invocation_id} is already in flight")
        raise Replay(stored[FINGERPRINT_LEN:])

    def keeper(self, invocation_id: str, max_in_flight_s: float) -> Callable[[], None]:
        """For a stream: each call counts the claim's worst case again from now, so an id stays
        in flight while its stream goes on relaying chunks, however long that is."""
        key = keys.idempotency(self.env, invocation_id)
        return lambda: self.leases.hold(key, max_in_flight_s)

    async def finish(self, invocation_id: str, digest: bytes | None, reply: bytes) -> None:
        """Store the reply for retries; called before the reply is sent."""
        if digest is None:
            return
        key = keys.idempotency(self.env, invocation_id)
        self.leases.drop(key)
        try:
            await self.redis.set(key, digest + reply, ex=RESULT_TTL_S)
        except RedisError as exc:
            metrics.IDEMPOTENCY_UNAVAILABLE.labels("store").inc()
            log.warning(
                "reply not stored for retries", extra={"error": repr(exc), "invocation_id": invocation_id}
            )

    async def forget(self, invocation_id: str) -> None:
        """Drop the marker of a call that failed before doing anything, so it may be retried."""
        key = keys.idempotency(self.env, invocation_id)
        self.leases.drop(key)
        try:
            await self.redis.delete(key)
        except RedisError:
            pass

"""Rollout acknowledgement, as an Envoy data plane ACKs or NACKs each xDS version.

Every replica that loads policy keeps one report in the environment's rollout bucket (key
`<service>.<replica>`): the version it runs, the last version it rejected and the error. It
writes the report whenever either changes and refreshes it every few seconds; on a clean stop
it deletes it. `sbctl config apply` and `sbctl config status` read the bucket: a replica is
`ok` once it runs the version (or a newer one), `rejected` when it refused it, `silent` when it
is alive but has said neither, and `stale` when its report stopped being refreshed (a replica
that died): stale replicas are shown, not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from enum import StrEnum

from nats.js.errors import BucketNotFoundError, NotFoundError

from shared import names
from shared.contracts import ReplicaReport

log = logging.getLogger("switchboard.rollout")
HEARTBEAT_S = 5.0
STALE_AFTER_S = 30.0


class ReplicaState(StrEnum):
    OK = "ok"  # runs the version (or a newer one)
    REJECTED = "rejected"  # refused it; the report carries the error
    SILENT = "silent"  # alive, but has neither run nor rejected it
    STALE = "stale"  # its report has not been refreshed for a while: gone, not counted


async def bucket(js, env: str):
    try:
        return await js.key_value(names.rollout_bucket(env))
    except BucketNotFoundError:
        return await js.create_key_value(bucket=names.rollout_bucket(env), history=1)


def replica_id() -> str:
    """host-pid-random, in the characters a KV key allows."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Reporter:
    """Keeps this replica's report current: on every change at once, otherwise as a heartbeat."""

    def __init__(self, js, env: str, service: str, snapshot: Callable[[], dict]) -> None:
        self.js = js
        self.env = env
        self.service = service
        self.replica = replica_id()
        self.key = f"{service}.{self.replica}"
        self._snapshot = snapshot
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._kv = None

    async def start(self) -> None:
        self._kv = await bucket(self.js, self.env)
        await self._put()
        self._task = asyncio.create_task(self._run())

    def changed(self) -> None:
        self._changed.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), HEARTBEAT_S)
            self._changed.clear()
            try:
                await self._put()
            except Exception as exc:  # NATS away for a moment: the next beat tries again
                log.warning("rollout report failed", extra={"error": repr(exc)})

    async def _put(self) -> None:
        report = ReplicaReport(
            service=self.service,
            replica=self.replica,
            reported_at=time.time(),
            heartbeat_s=HEARTBEAT_S,
            **self._snapshot(),
        )
        await self._kv.put(self.key, report.model_dump_json().encode())

    async def stop(self) -> None:
        """Stop reporting and withdraw the report: a replica that left cleanly is not stale."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._kv is not None:
            with contextlib.suppress(Exception):
                await self._kv.delete(self.key)


async def reports(js, env: str) -> list[ReplicaReport]:
    """Every replica's report, by service then replica.

    The keys come from the bucket's stream (one subject per key), not from a KV watch: a watch
    can close its initial listing before a key being rewritten at that moment arrives, which
    dropped replicas from the table exactly while they reported a new version."""
    kv = await bucket(js, env)
    name = names.rollout_bucket(env)
    prefix = f"$KV.{name}."
    info = await js.stream_info(f"KV_{name}", subjects_filter=prefix + ">")
    found = []
    for subject in info.state.subjects or {}:
        with contextlib.suppress(NotFoundError):  # withdrawn since the listing
            entry = await kv.get(subject[len(prefix) :])
            if entry.value:
                with contextlib.suppress(ValueError):
                    found.append(ReplicaReport.model_validate_json(entry.value))
    return sorted(found, key=lambda r: (r.service, r.replica))


def state(
    report: ReplicaReport, version: int, now: float, stale_after_s: float = STALE_AFTER_S
) -> ReplicaState:
    if now - report.reported_at > stale_after_s:
        return ReplicaState.STALE
    if report.version >= version:
        return ReplicaState.OK
    if report.rejected_version is not None and report.rejected_version >= version:
        return ReplicaState.REJECTED
    return ReplicaState.SILENT


async def wait(js, env: str, version: int, timeout_s: float, stale_after_s: float = STALE_AFTER_S):
    """Poll until every live replica has run or rejected `version`, or `timeout_s` passes;
    returns [(report, state)]."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = time.time()
        rows = [(r, state(r, version, now, stale_after_s)) for r in await reports(js, env)]
        if all(s is not ReplicaState.SILENT for _, s in rows) or time.monotonic() >= deadline:
            return rows
        await asyncio.sleep(0.1)

"""Stop switches: the paused workflows and agents of an environment, in one NATS KV key.

`sbctl workflow pause` / `sbctl agent pause` change the document with compare-and-set (two
operators never overwrite each other); every gateway replica watches the key and keeps the
document in memory, so refusing a paused invocation costs a dictionary lookup and takes
effect on every replica as soon as the watch delivers the change (milliseconds).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from shared import names
from shared.contracts import Pauses

log = logging.getLogger("switchboard.switches")
KV_HISTORY = 16


class SwitchStore:
    """The environment's switches bucket; created on first use by whoever comes first."""

    def __init__(self, js, env: str) -> None:
        self.js = js
        self.env = env
        self._kv = None

    async def bucket(self):
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(names.switches_bucket(self.env))
            except BucketNotFoundError:
                self._kv = await self.js.create_key_value(
                    bucket=names.switches_bucket(self.env), history=KV_HISTORY
                )
        return self._kv

    async def read(self) -> tuple[Pauses, int | None]:
        """The current document and its KV revision (None when nothing was ever paused)."""
        kv = await self.bucket()
        try:
            entry = await kv.get(names.SWITCHES_KEY)
        except (KeyNotFoundError, NotFoundError):
            return Pauses(), None
        return _read(entry.value) or Pauses(), entry.revision

    async def change(self, edit: Callable[[Pauses], None]) -> Pauses:
        """Apply `edit` to the current document and write it back (compare-and-set, retried)."""
        kv = await self.bucket()
        for _ in range(20):
            pauses, revision = await self.read()
            edit(pauses)
            data = pauses.model_dump_json().encode()
            try:
                if revision is None:
                    await kv.create(names.SWITCHES_KEY, data)
                else:
                    await kv.update(names.SWITCHES_KEY, data, last=revision)
                return pauses
            except KeyWrongLastSequenceError:
                continue
        raise RuntimeError("could not change the switches: they kept changing underneath")


class SwitchWatch:
    """One replica's copy of the switches, followed from the KV watch."""

    def __init__(self, js, env: str) -> None:
        self.store = SwitchStore(js, env)
        self.current = Pauses()
        self._watcher = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.current, _ = await self.store.read()
        kv = await self.store.bucket()
        self._watcher = await kv.watch(names.SWITCHES_KEY)
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for entry in self._watcher:
            if entry is not None and (pauses := _read(entry.value)) is not None:
                self.current = pauses  # an unreadable document keeps the switches as they were
                log.info(
                    "stop switches changed",
                    extra={
                        "paused_workflows": sorted(self.current.workflows),
                        "paused_agents": sorted(self.current.agents),
                    },
                )

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception:
                pass


def _read(value: bytes | None) -> Pauses | None:
    if not value:
        return Pauses()
    try:
        return Pauses.model_validate_json(value)
    except ValueError:
        log.error("unreadable stop switches document ignored")
        return None

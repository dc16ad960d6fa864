"""Live policy: numbered versions in a NATS KV bucket, watched by every service.

`sbctl config apply` records a version in the PostgreSQL history of record (see
`shared.sbctl.history`), then writes it here with compare-and-set (so a version is never
overwritten and numbers never repeat). Every service holds the active version
in one reference that it swaps atomically; a version that fails to load is reported and the
last good one stays in force (as an Envoy data plane NACKs a bad xDS update). A service that
starts before any version exists runs on its local files and reports `files:<checksum>`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError, NoKeysError, NotFoundError
from pydantic import BaseModel, ConfigDict

from shared import names, rollout
from shared.policy import Policy, PolicyLoadError, expand_or_raise, load_dir_or_raise
from shared.telemetry import metrics

log = logging.getLogger("switchboard.config")
KV_HISTORY = 64


class VersionDoc(BaseModel):
    """What one KV revision holds: the policy and who applied it when."""

    model_config = ConfigDict(extra="allow")
    version: int
    applied_at: float
    applied_by: str = "unknown"
    checksum: str
    source: str = ""
    action: str = "apply"  # apply | rollback | promote
    reason: str = ""
    policy: dict


@dataclass(frozen=True)
class ActivePolicy:
    policy: Policy
    version: str  # "7", or "files:<checksum>" before any version exists
    number: int  # 7, or 0 when running on files
    applied_at: float | None = None


class ConfigStore:
    """The KV bucket of an environment's policy versions."""

    def __init__(self, js, env: str) -> None:
        self.js = js
        self.env = env
        self._kv = None

    async def bucket(self):
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(names.config_bucket(self.env))
            except BucketNotFoundError:
                self._kv = await self.js.create_key_value(
                    bucket=names.config_bucket(self.env), history=KV_HISTORY
                )
        return self._kv

    async def entries(self) -> list:
        """Every stored revision of the policy key, newest first (at most KV_HISTORY)."""
        kv = await self.bucket()
        try:
            history = await kv.history(names.CONFIG_KEY)
        except (NoKeysError, NotFoundError, KeyError):
            return []
        return [e for e in reversed(history) if e.value]

    async def current(self) -> VersionDoc | None:
        """The newest readable version (an unreadable newer revision is skipped)."""
        for entry in await self.entries():
            if (doc := read_version(entry.value)) is not None:
                return doc
        return None

    async def put(self, doc: VersionDoc) -> None:
        """Write `doc` as the newest version: refused (`VersionConflict`) if KV already holds
        this number or a later one."""
        kv = await self.bucket()
        data = doc.model_dump_json().encode()
        for _ in range(20):
            entries = await self.entries()
            last_rev = entries[0].revision if entries else None
            last_version = max((d.version for e in entries if (d := read_version(e.value))), default=0)
            if last_version >= doc.version:
                raise VersionConflict(f"KV already holds version {last_version}; not writing {doc.version}")
            try:
                if last_rev is None:
                    await kv.create(names.CONFIG_KEY, data)
                else:
                    await kv.update(names.CONFIG_KEY, data, last=last_rev)
                return
            except KeyWrongLastSequenceError:
                continue
        raise VersionConflict("could not write the version: the policy kept changing underneath")

    async def apply(self, policy: Policy, *, applied_by: str, source: str = "") -> VersionDoc:
        """Write `policy` as the next version straight to KV, without the history of record
        (tests and tools that own their environment; operators use `sbctl config apply`)."""
        kv = await self.bucket()
        for _ in range(20):
            entries = await self.entries()
            last_rev = entries[0].revision if entries else None
            last_version = max((d.version for e in entries if (d := read_version(e.value))), default=0)
            doc = VersionDoc(
                version=last_version + 1,
                applied_at=time.time(),
                applied_by=applied_by,
                checksum=policy.checksum(),
                source=source,
                policy=policy.model_dump(mode="json"),
            )
            data = doc.model_dump_json().encode()
            try:
                if last_rev is None:
                    await kv.create(names.CONFIG_KEY, data)
                else:
                    await kv.update(names.CONFIG_KEY, data, last=last_rev)
                return doc
            except KeyWrongLastSequenceError:
                continue
        raise RuntimeError("could not apply: the policy kept changing underneath")


def _version_of(value: bytes) -> int:
    """The version number of a document that may not load at all (0 when unreadable)."""
    try:
        number = orjson.loads(value).get("version")
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return number if isinstance(number, int) else 0


class VersionConflict(RuntimeError):
    """Another version was written to KV at the same time."""


def read_version(value: bytes | None) -> VersionDoc | None:
    try:
        return VersionDoc.model_validate_json(value) if value else None
    except ValueError:
        return None


class LiveConfig:
    """The active policy of one service, kept current from the KV bucket."""

    def __init__(self, js, *, env: str, config_dir: str, service: str) -> None:
        self.store = ConfigStore(js, env)
        self.config_dir = config_dir
        self.service = service
        self._active: ActivePolicy | None = None
        self._watcher = None
        self._task: asyncio.Task | None = None
        self._listeners: list[Callable[[ActivePolicy], None]] = []
        self.last_error: str | None = None
        self.rejected_version: int | None = None  # the newest version this replica refused
        self._revision = 0  # newest KV revision looked at
        self.reporter = rollout.Reporter(js, env, service, self._report)

    @property
    def active(self) -> ActivePolicy:
        if self._active is None:
            raise RuntimeError("no policy loaded")
        return self._active

    @property
    def loaded(self) -> bool:
        return self._active is not None

    def on_change(self, listener: Callable[[ActivePolicy], None]) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        """Load local files, then the newest version if one exists, then watch for more."""
        try:
            policy = load_dir_or_raise(self.config_dir)
            self._swap(ActivePolicy(policy, f"files:{policy.checksum()[:12]}", 0))
            log.info(
                "running on local policy files until a version is applied",
                extra={"config_dir": self.config_dir, "config_version": self._active.version},
            )
        except PolicyLoadError as exc:
            self.last_error = str(exc)
            log.warning(
                "local policy files did not load", extra={"config_dir": self.config_dir, "error": str(exc)}
            )
        # Newest first, the first version that loads wins: a replica started after a rejected
        # version runs the last good one, as the replicas that were already running do.
        entries = await self.store.entries()
        if entries:
            self._revision = entries[0].revision
        for entry in entries:
            if self._load(entry.value):
                break
        if entries and self._active and self._active.number and entries[0].value:
            newest = read_version(entries[0].value)
            if newest is None or newest.version != self._active.number:
                self.last_error = (
                    f"version at KV revision {entries[0].revision} rejected; running {self._active.version}"
                )
        kv = await self.store.bucket()
        self._watcher = await kv.watch(names.CONFIG_KEY)  # replays the current value, then follows
        self._task = asyncio.create_task(self._follow())
        await self.reporter.start()

    def _report(self) -> dict:
        """What this replica tells `sbctl config apply/status` (see shared.rollout)."""
        active = self._active
        return {
            "version": active.number if active else 0,
            "config_version": active.version if active else "",
            "rejected_version": self.rejected_version,
            "error": self.last_error if self.rejected_version is not None else None,
        }

    async def _follow(self) -> None:
        async for entry in self._watcher:
            if entry is not None and entry.revision > self._revision:
                self._revision = entry.revision
                self._load(entry.value)

    def _load(self, value: bytes | None) -> bool:
        """Swap to this version if it is newer than the active one; False if it does not load."""
        if not value:
            return False
        try:
            doc = VersionDoc.model_validate_json(value)
            policy = Policy.model_validate(expand_or_raise(doc.policy))  # in this replica's environment
        except Exception as exc:
            metrics.CONFIG_REJECTED.labels(self.service).inc()
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.rejected_version = max(_version_of(value), self.rejected_version or 0) or None
            self.reporter.changed()
            log.error(
                "policy version rejected; keeping the last good one",
                extra={
                    "error": self.last_error,
                    "config_version": self._active.version if self._active else None,
                },
            )
            return False
        if self._active is not None and self._active.number >= doc.version:
            return True
        self.last_error = None
        self._swap(ActivePolicy(policy, str(doc.version), doc.version, doc.applied_at))
        log.info(
            "policy version active", extra={"config_version": str(doc.version), "applied_by": doc.applied_by}
        )
        return True

    def _swap(self, active: ActivePolicy) -> None:
        self._active = active
        self.reporter.changed()
        metrics.CONFIG_VERSION.labels(self.service).set(active.number)
        for listener in self._listeners:
            listener(active)

    async def stop(self) -> None:
        await self.reporter.stop()
        if self._task:
            self._task.cancel()
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception:
                pass

"""The life of a service process: one exit stack, ready checks, signals, clean shutdown.

A service is usable in-process (`async with Service(settings)`, or `start()`/`shutdown()`,
shutdown safe twice) by tests, and as a process by `Service.main()`. Shutdown drains NATS
first (no new work; in-flight replies and events finish), then closes the rest in reverse.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from contextlib import AsyncExitStack
from typing import ClassVar

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from shared import redis_version
from shared.bus import Bus
from shared.live_config import LiveConfig
from shared.ops_http import OpsServer
from shared.settings import Settings
from shared.telemetry.logs import setup_logging
from shared.telemetry.tracing import setup_tracing
from switchboard_sdk import errors

log = logging.getLogger("switchboard.service")
GC_YOUNG_THRESHOLD = 10_000  # net new container objects before a young collection (Python's: 700)


class Service:
    name: ClassVar[str]
    settings_class: ClassVar[type[Settings]] = Settings
    uses_redis: ClassVar[bool] = False
    uses_database: ClassVar[bool] = False
    uses_config: ClassVar[bool] = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bus: Bus | None = None
        self.redis: aioredis.Redis | None = None
        self.db: asyncpg.Pool | None = None
        self.config: LiveConfig | None = None
        self.ops: OpsServer | None = None
        self._stack: AsyncExitStack | None = None
        self._started_at = time.time()

    # --- hooks for subclasses ---------------------------------------------------------

    async def setup(self, stack: AsyncExitStack) -> None:
        """Open the service's own resources and subscribe; called once everything is connected."""

    def health_details(self) -> dict:
        return {}

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> Service:
        s = self.settings
        setup_tracing(self.name, s.env)
        stack = AsyncExitStack()
        self._stack = stack
        try:
            if self.uses_redis:
                # One immediate retry covers a pooled connection made stale by a Redis restart;
                # the client's default (ten, with backoff) would hold callers for seconds.
                # A blocking pool: under a burst, callers wait briefly for a connection instead of
                # failing with "too many connections" as the default pool does.
                pool = aioredis.BlockingConnectionPool.from_url(
                    s.redis_url,
                    max_connections=s.redis_max_connections,
                    timeout=1.0,
                    socket_timeout=1.0,
                    socket_connect_timeout=1.0,
                    health_check_interval=10,
                    retry=Retry(NoBackoff(), 1),
                    **s.redis_options(),
                )
                self.redis = aioredis.Redis.from_pool(pool)
                stack.push_async_callback(self.redis.aclose)
                await redis_version.require_supported(self.redis)
            if self.uses_database:
                self.db = await asyncpg.create_pool(
                    s.database_url, min_size=1, max_size=8, timeout=5.0, **s.database_options()
                )
                stack.push_async_callback(self.db.close)
            self.bus = await Bus.connect(
                s.nats_url,
                env=s.env,
                service=self.name,
                max_payload=s.max_payload_bytes,
                max_inflight=s.max_inflight,
                settings=s,
            )
            stack.push_async_callback(self.bus.close)
            await self.bus.ensure_events_stream()  # every service emits events
            if self.uses_config:
                self.config = LiveConfig(self.bus.js, env=s.env, config_dir=s.config_dir, service=self.name)
                await self.config.start()
                stack.push_async_callback(self.config.stop)
            await self.setup(stack)
            await self.bus.register()
            self.ops = OpsServer(s.http_host, s.http_port, self.health, self.ready)
            await self.ops.start()
            stack.push_async_callback(self.ops.stop)
        except BaseException:
            await self.shutdown()
            raise
        log.info("service started", extra={"http_port": self.ops.port, "config_version": self.config_version})
        return self

    async def shutdown(self) -> None:
        """Stop taking work, finish what is in flight, then close everything in reverse order."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        if self.bus is not None:
            await self.bus.stop_serving(self.settings.drain_timeout_s)
        await stack.aclose()

    async def __aenter__(self) -> Service:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.shutdown()

    # --- health -----------------------------------------------------------------------

    @property
    def config_version(self) -> str | None:
        return self.config.active.version if self.config and self.config.loaded else None

    def health(self) -> dict:
        body = {
            "status": "ok",
            "service": self.name,
            "env": self.settings.env,
            "uptime_s": round(time.time() - self._started_at, 1),
        }
        if self.config is not None:
            body["config_version"] = self.config_version
            body["config_source"] = "files" if self.config.loaded and self.config.active.number == 0 else "kv"
            if self.config.last_error:  # a summary only: the reason is in the log, not for any caller
                body["config_error"] = f"a policy version was rejected; running {self.config_version}"
        body.update(self.health_details())
        return body

    async def ready(self) -> dict[str, str]:
        checks: dict[str, str] = {"nats": "ok" if self.bus and self.bus.connected else "down"}
        if self.redis is not None:
            checks["redis"] = await _probe(self.redis.ping())
        if self.db is not None:
            checks["postgres"] = await _probe(self.db.fetchval("select 1"))
        if self.config is not None:
            checks["config"] = "ok" if self.config.loaded else "no policy loaded"
        return checks

    # --- process entry point ----------------------------------------------------------

    @classmethod
    def main(cls) -> None:
        """Run as a process until SIGTERM or SIGINT, then shut down cleanly."""
        settings = cls.settings_class()
        setup_logging(cls.name, settings.env, settings.log_level)
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        try:
            asyncio.run(cls(settings)._serve_forever())
        except errors.SwitchboardError as exc:  # refused to start (a dependency): one coded line
            log.critical("cannot start", extra={"code": exc.code, "error": exc.message})
            raise SystemExit(1) from None

    async def _serve_forever(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        tune_collector()
        await stop.wait()
        log.info("shutting down: draining")
        await self.shutdown()
        log.info("stopped")


def tune_collector() -> None:
    """Take what start-up allocated (modules, the policy, clients: 85,000-113,000 objects per
    service) out of the cyclic collector's walk, and let the young generation grow before it is
    collected. Frozen: a full collection no longer walks start-up's objects (50-90 ms of CPU in the
    gateway or the budget, with the process serving nothing, about once per thousand invocations).
    A larger young generation: one pass per several hundred invocations instead of one per dozen,
    each a few ms, and far less CPU in all (docs/performance.md). Garbage is collected first; what
    is frozen is still freed by reference counting, only a cycle among it would never be."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD)
    log.info("collector tuned", extra={"frozen": gc.get_freeze_count(), "thresholds": gc.get_threshold()})


async def _probe(awaitable) -> str:
    try:
        await asyncio.wait_for(awaitable, timeout=1.0)
        return "ok"
    except Exception as exc:
        return f"down: {type(exc).__name__}"

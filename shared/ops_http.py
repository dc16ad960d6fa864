"""The operations endpoints every service serves on its own port: /healthz, /readyz, /metrics.

Three fixed routes with no request bodies, so a bare aiohttp site is enough; it embeds in the
service's own event loop and binds port 0 in tests without ceremony.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

HealthFn = Callable[[], dict]
ReadyFn = Callable[[], Awaitable[dict[str, str]]]


class OpsServer:
    def __init__(self, host: str, port: int, health: HealthFn, ready: ReadyFn) -> None:
        self.host, self.port = host, port
        self._health, self._ready = health, ready
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response(self._health())

    async def _readyz(self, _: web.Request) -> web.Response:
        checks = await self._ready()
        ok = all(v == "ok" for v in checks.values())
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

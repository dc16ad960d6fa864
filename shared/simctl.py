"""Async client for the provider simulator's control API (``/_sim/*``).

Used by tests, drills and benchmarks to drive the simulator at run time: inject faults
(429/500/503/400/hang/malformed/latency, a stream broken
after N chunks, a provider ignoring max_tokens), set base latency, read and reset request stats.
``base_url`` is the simulator root (e.g. ``http://127.0.0.1:9180``), not a ``/p/<name>``
provider URL.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import httpx
from httpx_aiohttp import AiohttpTransport


class SimulatorControl:
    """Thin wrapper over the simulator's control routes; raises ``httpx.HTTPStatusError``."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), transport=AiohttpTransport(), timeout=timeout
        )

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = await self._client.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    async def add_fault(
        self,
        kind: str,
        provider: str | None = None,
        model: str | None = None,
        count: int | None = None,
        retry_after_s: float | None = None,
        latency_ms: float | None = None,
        after_chunks: int | None = None,
    ) -> str:
        """Add a fault rule (newest rule wins) and return its id. `break` drops the connection
        after `after_chunks` content chunks of a stream."""
        body = {
            "kind": str(kind),
            "provider": provider,
            "model": model,
            "count": count,
            "retry_after_s": retry_after_s,
            "latency_ms": latency_ms,
            "after_chunks": after_chunks,
        }
        return (await self._call("POST", "/_sim/faults", body))["id"]

    async def remove_fault(self, fault_id: str) -> None:
        await self._call("DELETE", f"/_sim/faults/{fault_id}")

    async def clear_faults(self) -> None:
        await self._call("DELETE", "/_sim/faults")

    async def stats(self) -> dict[str, Any]:
        """``{"total": n, "by_provider": {provider: {model: n}}}``."""
        return await self._call("GET", "/_sim/stats")

    async def reset(self) -> None:
        """Clear fault rules and stats; restore the start-up base latency."""
        await self._call("POST", "/_sim/reset")

    async def set_latency(self, latency_ms: float | None, provider: str | None = None) -> None:
        """Set base latency globally, or for one provider (``None`` drops its override)."""
        await self._call("PUT", "/_sim/latency", {"provider": provider, "latency_ms": latency_ms})

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

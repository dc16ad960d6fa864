"""One pooled HTTP transport per provider, rebuilt when the policy changes its connection settings.

httpx is the API; its default transport collapses under concurrency on this kind of machine
(encode/httpx#3215), so each provider's connections are the aiohttp transport from
httpx-aiohttp. Adapters send their requests on it directly (see `base.py` for why not through
an `httpx.AsyncClient`).
"""

from __future__ import annotations

import asyncio
import logging

import httpx
from httpx_aiohttp import AiohttpTransport

from shared.policy import Policy, ProviderKind, ProviderSpec
from shared.providers.anthropic import AnthropicAdapter
from shared.providers.base import ProviderAdapter
from shared.providers.openai import OpenAIAdapter

log = logging.getLogger("switchboard.providers")
ADAPTERS: dict[ProviderKind, type[ProviderAdapter]] = {
    ProviderKind.OPENAI: OpenAIAdapter,
    ProviderKind.ANTHROPIC: AnthropicAdapter,
}
CLOSE_GRACE_S = 60.0


def _transport(spec: ProviderSpec) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(
        max_connections=spec.max_connections,
        max_keepalive_connections=spec.max_connections,
        keepalive_expiry=30,
    )
    return AiohttpTransport(limits=limits, trust_env=False)


class ProviderPool:
    def __init__(self) -> None:
        self._adapters: dict[str, ProviderAdapter] = {}
        self._specs: dict[str, ProviderSpec] = {}
        self._retired: set[asyncio.Task] = set()

    def get(self, name: str) -> ProviderAdapter | None:
        return self._adapters.get(name)

    def update(self, policy: Policy) -> None:
        """Keep clients whose provider spec is unchanged; replace the others."""
        adapters = {}
        for name, spec in policy.providers.items():
            old = self._adapters.get(name)
            if old is not None and self._specs.get(name) == spec:
                adapters[name] = old
            else:
                adapters[name] = ADAPTERS[spec.kind](name, spec, _transport(spec))
        for name, old in self._adapters.items():
            if adapters.get(name) is not old:
                self._retire(old.transport)
        self._adapters = adapters
        self._specs = dict(policy.providers)

    def _retire(self, transport: httpx.AsyncBaseTransport) -> None:
        """Close a replaced transport after in-flight calls on it have had time to finish."""

        async def later() -> None:
            await asyncio.sleep(CLOSE_GRACE_S)
            await transport.aclose()

        task = asyncio.ensure_future(later())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def aclose(self) -> None:
        for task in list(self._retired):
            task.cancel()
        for adapter in self._adapters.values():
            await adapter.transport.aclose()
        self._adapters.clear()

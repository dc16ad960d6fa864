"""A blocking wrapper around `Client` for code that has no event loop of its own."""

from __future__ import annotations

import asyncio
import threading

from switchboard_sdk._client import Client, MessagesIn
from switchboard_sdk.contracts import InvokeResult


class SyncClient:
    """Runs a private event loop in a daemon thread; safe to call from several threads."""

    def __init__(self, nats_url: str | None = None, **kwargs) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="switchboard-sdk", daemon=True)
        self._thread.start()
        self._client = Client(nats_url, **kwargs)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def invoke(self, workflow: str, messages: MessagesIn, **kwargs) -> InvokeResult:
        return self._run(self._client.invoke(workflow, messages, **kwargs))

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

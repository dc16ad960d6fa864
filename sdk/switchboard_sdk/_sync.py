"""A blocking wrapper around `Client` for code that has no event loop of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

from switchboard_sdk._client import Client, MessagesIn
from switchboard_sdk._stream import Stream
from switchboard_sdk.contracts import InvokeResult, StreamChunk

_END = object()


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

    def stream(self, workflow: str, messages: MessagesIn, **kwargs) -> SyncStream:
        """`Client.stream`, iterated without an event loop: `for chunk in sb.stream(...)`."""
        return SyncStream(self._run, self._client.stream(workflow, messages, **kwargs))

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


class SyncStream:
    """A `Stream` read from blocking code; `result` is the final result once iteration ends, and
    iteration raises `StreamInterrupted` as the async one does."""

    def __init__(self, run, stream: Stream) -> None:
        self._run = run
        self._stream = stream

    @property
    def result(self) -> InvokeResult | None:
        return self._stream.result

    def __iter__(self) -> Iterator[StreamChunk]:
        chunks = aiter(self._stream)

        async def next_chunk():
            return await anext(chunks, _END)

        try:
            while (chunk := self._run(next_chunk())) is not _END:
                yield chunk
        finally:
            self._run(chunks.aclose())

    def close(self) -> None:
        self._run(self._stream.aclose())

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

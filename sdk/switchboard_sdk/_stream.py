"""A streamed invocation as an agent reads it: the chunks in order from its own inbox, then the
final result; a stream that broke after its first chunk raises, so a partial answer never looks
complete."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout

from switchboard_sdk import _tracing, codec, errors
from switchboard_sdk.contracts import InvokeRequest, InvokeResult, StreamChunk

if TYPE_CHECKING:
    from switchboard_sdk._client import Client

NO_RESPONDERS = "503"  # the status NATS sends to the inbox when nothing serves the subject
FINAL = b'"status":'  # only the final message has it (a chunk's text cannot hold it unescaped)


class Stream:
    """One streamed invocation, sent when iteration starts. Iterate it for `StreamChunk`s, in
    order (their `delta`s joined are the answer); then `result` is the final `InvokeResult`,
    with `usage`, `status` and `stream` (chunks, time to the first, how it ended).

    Iteration raises `StreamInterrupted` when the answer broke after its first chunk: the
    gateway said so (`result` then holds its final message: the partial output and usage), a
    chunk was lost, or nothing came for `timeout` seconds after a chunk. It raises
    `ControlPlaneUnavailable` as `invoke` does when no gateway answers at all. An answer that
    never started (refused, every tier failed, held for review) ends without chunks: read
    `result.status`. A retry of a finished stream (same invocation id) and a passthrough call
    made while the plane was unreachable give the whole output as one chunk.
    """

    def __init__(self, client: Client, request: InvokeRequest, timeout: float) -> None:
        self._client = client
        self.request = request
        self.timeout = timeout
        self.result: InvokeResult | None = None
        self._started = False
        self._reading: AsyncIterator | None = None

    @property
    def invocation_id(self) -> str:
        return self.request.invocation_id

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening (chunks still on their way are dropped); safe to call twice."""
        if self._reading is not None:
            await self._reading.aclose()

    async def __aiter__(self) -> AsyncIterator[StreamChunk]:
        if self._started:
            raise RuntimeError("a stream is read once; its final result stays in `result`")
        self._started = True
        client, request = self._client, self.request
        nc = await client._link()
        if nc is None:
            await self._degrade(f"cannot reach NATS at {client.nats_url}")
        else:
            seq = 0
            with _tracing.span(f"invoke {request.workflow}", request.invocation_id):
                headers = _tracing.headers()
            subject = client._subject(request.workflow)
            self._reading = read_stream(nc, subject, request, self.timeout, headers)
            async with contextlib.aclosing(self._reading) as messages:
                async for message in messages:
                    if isinstance(message, StreamChunk):
                        seq += 1
                        yield message
                    else:
                        self.result = message
            if self.result is None:
                await self._degrade("no gateway is serving this environment")
            else:
                client._answered(request.workflow, self.result)
                error = self.result.error
                if error is not None and error.code == errors.StreamInterrupted.code:
                    raise errors.from_wire(error)
            if seq:
                return
        if self.result.output and (self.result.stream is not None or not self.result.enforced):
            yield StreamChunk(invocation_id=request.invocation_id, seq=0, delta=self.result.output)

    async def _degrade(self, reason: str) -> None:
        self.result = await self._client._degrade(self.request, reason)


async def read_stream(
    nc: NATS, subject: str, request: InvokeRequest, timeout: float, headers: dict[str, str] | None = None
) -> AsyncIterator[StreamChunk | InvokeResult]:
    """The wire half of a streamed invocation, for any NATS connection: publish `request` (with
    `stream: true`) on `subject` with a fresh inbox of the connection as its reply subject, then
    yield the chunks in order and the final `InvokeResult` last. Ends without a result when no
    gateway serves the subject. Raises `StreamInterrupted` when a chunk is lost or nothing
    follows a chunk within `timeout`, and `ControlPlaneUnavailable` when nothing comes at all."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(subject, codec.encode(request), inbox, headers or None)
        seq = 0
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except NatsTimeout as exc:
                if seq == 0:  # not degraded: a gateway may have taken it (see `Client.send`)
                    raise errors.ControlPlaneUnavailable(
                        f"no answer from the gateway within {timeout:g}s"
                    ) from exc
                raise errors.StreamInterrupted(
                    f"nothing after chunk {seq - 1} of {request.invocation_id} within {timeout:g}s"
                ) from exc
            if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
                return
            if FINAL in msg.data:
                yield codec.decode(msg.data, InvokeResult)
                return
            chunk = codec.decode(msg.data, StreamChunk)
            if chunk.seq != seq:
                raise errors.StreamInterrupted(f"chunk {seq} of {request.invocation_id} was lost")
            seq += 1
            yield chunk
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

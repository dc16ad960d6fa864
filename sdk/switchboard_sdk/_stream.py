"""A streamed invocation as an agent reads it: the chunks in order from its own inbox, then the
final result; a stream that broke after its first chunk raises, so a partial answer never looks
complete."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

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
        self._sub = None
        self._started = False

    @property
    def invocation_id(self) -> str:
        return self.request.invocation_id

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening (chunks still on their way are dropped); safe to call twice."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def __aiter__(self) -> AsyncIterator[StreamChunk]:
        if self._started:
            raise RuntimeError("a stream is read once; its final result stays in `result`")
        self._started = True
        client, request = self._client, self.request
        nc = await client._link()
        if nc is None:
            await self._degrade(f"cannot reach NATS at {client.nats_url}")
        else:
            inbox = nc.new_inbox()
            self._sub = await nc.subscribe(inbox)
            with _tracing.span(f"invoke {request.workflow}", request.invocation_id):
                headers = _tracing.headers() or None
                await nc.publish(client._subject(request.workflow), codec.encode(request), inbox, headers)
            seq = 0
            try:
                while True:
                    msg = await self._next(seq)
                    if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
                        await self._degrade("no gateway is serving this environment")
                        break
                    if FINAL in msg.data:
                        self.result = codec.decode(msg.data, InvokeResult)
                        break
                    chunk = codec.decode(msg.data, StreamChunk)
                    if chunk.seq != seq:
                        raise errors.StreamInterrupted(f"chunk {seq} of {request.invocation_id} was lost")
                    seq += 1
                    yield chunk
            finally:
                await self.aclose()
            client._answered(request.workflow, self.result)
            error = self.result.error
            if error is not None and error.code == errors.StreamInterrupted.code:
                raise errors.from_wire(error)
            if seq:
                return
        if self.result.output and (self.result.stream is not None or not self.result.enforced):
            yield StreamChunk(invocation_id=request.invocation_id, seq=0, delta=self.result.output)

    async def _next(self, seq: int):
        try:
            return await self._sub.next_msg(timeout=self.timeout)
        except NatsTimeout as exc:
            if seq == 0:  # not degraded: a gateway may have taken it (see `Client.send`)
                raise errors.ControlPlaneUnavailable(
                    f"no answer from the gateway within {self.timeout:g}s"
                ) from exc
            raise errors.StreamInterrupted(
                f"nothing after chunk {seq - 1} of {self.invocation_id} within {self.timeout:g}s"
            ) from exc

    async def _degrade(self, reason: str) -> None:
        self.result = await self._client._degrade(self.request, reason)

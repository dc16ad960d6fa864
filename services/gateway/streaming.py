"""A streamed answer relayed to the requester's own reply inbox, one core NATS publish per chunk
(no JetStream, no per-chunk span or event: the audit row carries the stream's summary).

The completion cap (the reservation's max_tokens) is counted as one token per chunk, a lower
bound: the stream is cut when a chunk would pass it. A provider that packs several tokens in a
chunk is still held by the max_tokens it was asked for, and its reported usage is what settles.
A failure before the first chunk is raised like any failed call (the next tier may serve it);
after it, the chunks sent cannot be taken back, so the relay ends and says it was interrupted.
A chunk this process cannot publish (its NATS connection closed, its buffer full while it
reconnects, a chunk larger than a message may be) ends the relay the same way, reading no more
of the provider: the tokens produced so far, that one included, are what settles. A requester
that went away fails no publish (core NATS drops what nobody listens to): that stream is read
to its end and settled in full. A stream whose budget reservation can no longer be kept held
(see `holds.py`) ends the same way before its next chunk is sent: that chunk and those before
it are what settles."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from shared import codec
from shared.contracts import AttemptOutcome, Message, StreamEnd, StreamInfo
from shared.providers.base import CallParams, Completion, ProviderAdapter, ProviderCallError


class StreamRelay:
    """Where one invocation's chunks go; `info()` describes the stream once it is over."""

    def __init__(self, nc: NATS, inbox: str, invocation_id: str, started: float) -> None:
        self.nc = nc
        self.inbox = inbox
        self.invocation_id = invocation_id
        self.started = started
        self.sent = 0
        self.first_chunk_ms: float | None = None
        self.end = StreamEnd.COMPLETE
        # Called after each chunk sent: keeps the invocation id's claim for as long as the
        # stream goes on, which no tier timeout bounds (a timeout is for the next chunk).
        self.alive: Callable[[], None] | None = None
        # True once the budget reservation may lapse before the next chunk (`HoldKeeper`): the
        # stream ends then, its tokens settled against the hold that still stands.
        self.lapsing: Callable[[], bool] | None = None

    def info(self) -> StreamInfo:
        return StreamInfo(chunks=self.sent, first_chunk_ms=self.first_chunk_ms, end=self.end)

    async def relay(
        self,
        adapter: ProviderAdapter,
        model: str,
        messages: list[Message],
        params: CallParams,
        timeout_s: float,
        prompt_estimate: int,
    ) -> tuple[Completion, ProviderCallError | None]:
        """Stream one tier to the inbox: (what was answered, the failure that broke it after
        its first chunk or None). Raises `ProviderCallError` when nothing was sent."""
        pieces: list[str] = []
        broken: ProviderCallError | None = None
        async with adapter.stream(model, messages, params, timeout_s) as stream:
            try:
                async with contextlib.aclosing(aiter(stream)) as chunks:
                    async for piece in chunks:
                        if len(pieces) == params.max_tokens:
                            self.end = StreamEnd.CAP
                            break
                        pieces.append(piece)
                        if self.lapsing is not None and self.lapsing():
                            broken, self.end = _unheld(len(pieces)), StreamEnd.INTERRUPTED
                            break
                        try:
                            await self._send(piece)
                        except NatsError as exc:
                            broken, self.end = _unrelayed(len(pieces), exc), StreamEnd.INTERRUPTED
                            break
            except ProviderCallError as exc:
                if not pieces:
                    raise
                broken, self.end = exc, StreamEnd.INTERRUPTED
        reported = stream.completion_tokens
        if self.end is not StreamEnd.COMPLETE or reported is None:  # no final count: chunks read
            reported = max(len(pieces), reported or 0)
        completion = Completion(
            output="".join(pieces[: self.sent]),
            prompt_tokens=stream.prompt_tokens if stream.prompt_tokens is not None else prompt_estimate,
            completion_tokens=reported,
            finish_reason="length" if self.end is StreamEnd.CAP else stream.finish_reason,
            model=stream.model,
        )
        return completion, broken

    async def _send(self, piece: str) -> None:
        chunk = {"invocation_id": self.invocation_id, "seq": self.sent, "delta": piece}
        await self.nc.publish(self.inbox, codec.encode(chunk))
        if self.first_chunk_ms is None:  # timed once it is sent: a chunk that failed reached no one
            self.first_chunk_ms = round((time.perf_counter() - self.started) * 1000, 3)
        self.sent += 1
        if self.alive is not None:
            self.alive()


def _unheld(n: int) -> ProviderCallError:
    """Why a stream stopped at chunk `n`: its budget reservation could not be kept held."""
    return ProviderCallError(
        AttemptOutcome.OK, f"chunk {n} not relayed: the budget reservation could not be extended"
    )


def _unrelayed(n: int, exc: NatsError) -> ProviderCallError:
    """Why a stream stopped at chunk `n` although its provider answered (the attempt stays ok)."""
    return ProviderCallError(
        AttemptOutcome.OK, f"chunk {n} could not be relayed to the requester ({type(exc).__name__})"
    )

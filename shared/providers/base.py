"""What every adapter shares: the call with its deadline, the streamed call, and the
classification of failures into attempt outcomes (which decide whether the next tier is tried).

Requests are `httpx.Request`s sent on the provider's pooled transport (`pool.py`), not through
an `httpx.AsyncClient`: the client's layers (URL parsing and merging, header merging, the auth
and redirect flows, the cookie jar's pass over every answer) cost about as much CPU as the HTTP
exchange itself, for one absolute URL, no auth flow and redirects never followed. The request
carries what the client would have added (`CLIENT_HEADERS`, its timeouts, the cookies the
provider set), so a provider sees the same request."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import orjson

from shared.contracts import AttemptOutcome, Message
from shared.policy import ProviderSpec

MAX_ERROR_TEXT = 300
# The default headers and timeouts of an httpx.AsyncClient (the timeouts the client had: the
# call's own deadline is `asyncio.timeout`).
CLIENT_HEADERS = {
    "accept": "*/*",
    "accept-encoding": "gzip, deflate",
    "connection": "keep-alive",
    "user-agent": f"python-httpx/{httpx.__version__}",
}
CLIENT_TIMEOUT = httpx.Timeout(600.0)


@dataclass(slots=True)
class Completion:
    output: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    model: str | None = None  # the model that answered, as the provider names it


@dataclass(slots=True)
class CallParams:
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None


class ProviderCallError(Exception):
    """A failed provider call, classified. `fallback` says whether another tier may serve it."""

    def __init__(
        self,
        outcome: AttemptOutcome,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s

    @property
    def fallback(self) -> bool:
        return self.outcome is not AttemptOutcome.CLIENT_ERROR


class ProviderStream:
    """A streamed answer being read. Iterating yields the text pieces in order; the provider's
    usage and finish reason are kept as its events bring them (`prompt_tokens`,
    `completion_tokens`: None until said). Iteration ends cleanly only on the API's end event
    (`ended`); a stream that stops without it, says `error`, goes quiet for `idle_s` or cannot
    be read raises `ProviderCallError`."""

    def __init__(self, adapter: ProviderAdapter, response: httpx.Response, idle_s: float) -> None:
        self.adapter = adapter
        self.response = response
        self.idle_s = idle_s
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.ended = False

    async def __aiter__(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        event: str | None = None
        try:
            async with asyncio.timeout(self.idle_s) as idle:
                async for line in self.response.aiter_lines():
                    idle.reschedule(loop.time() + self.idle_s)
                    if line.startswith("data:"):
                        piece = self.adapter.read_event(self, event, line[5:].strip())
                        if piece:
                            yield piece
                        if self.ended:
                            return
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif not line:
                        event = None
        except TimeoutError as exc:
            raise ProviderCallError(AttemptOutcome.TIMEOUT, f"stream idle for {self.idle_s:g}s") from exc
        except httpx.HTTPError as exc:
            raise ProviderCallError(
                AttemptOutcome.CONNECTION_ERROR, f"stream broken: {type(exc).__name__}"
            ) from exc
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ProviderCallError(
                AttemptOutcome.MALFORMED, f"unreadable event: {type(exc).__name__}"
            ) from exc
        raise ProviderCallError(AttemptOutcome.CONNECTION_ERROR, "stream ended without its end event")


class ProviderAdapter:
    """Base of the API adapters; subclasses build the request body and read the answer."""

    path: str = ""

    def __init__(self, name: str, spec: ProviderSpec, transport: httpx.AsyncBaseTransport) -> None:
        self.name = name
        self.spec = spec
        self.transport = transport
        self.url = httpx.URL(spec.base_url.rstrip("/") + self.path)  # parsed once
        self._key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
        self.headers = self.auth_headers(self._key)
        self._sent_headers = {**CLIENT_HEADERS, **self.headers}
        self._extensions = {"timeout": CLIENT_TIMEOUT.as_dict()}
        self._cookies = httpx.Cookies()  # what the provider set, sent back as a client would

    def auth_headers(self, api_key: str) -> dict[str, str]:
        raise NotImplementedError

    def body(self, model: str, messages: list[Message], params: CallParams) -> dict:
        raise NotImplementedError

    def parse(self, data: dict) -> Completion:
        raise NotImplementedError

    def stream_body(self, model: str, messages: list[Message], params: CallParams) -> dict:
        raise NotImplementedError

    def read_event(self, stream: ProviderStream, event: str | None, data: str) -> str | None:
        """One server-sent event of a stream: its text piece, if any; records usage, finish
        reason and the end on `stream`; raises `ProviderCallError` on an error event."""
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def stream(
        self, model: str, messages: list[Message], params: CallParams, timeout_s: float
    ) -> AsyncIterator[ProviderStream]:
        """Open a streamed call; the provider must start answering within `timeout_s`, and then
        never go quiet for longer. Raises `ProviderCallError` before the stream when the call
        fails as a whole (as `complete` would); leaving the block closes the connection."""
        payload = orjson.dumps(self.stream_body(model, messages, params))
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(timeout_s):
                    response = await self._send(payload)
                    stack.push_async_callback(response.aclose)
                    if response.status_code >= 400:
                        await response.aread()
            except TimeoutError as exc:
                raise ProviderCallError(AttemptOutcome.TIMEOUT, f"no answer within {timeout_s:g}s") from exc
            except httpx.HTTPError as exc:
                raise _transport_error(exc) from exc
            if response.status_code >= 400:
                raise self._http_error(response)
            yield ProviderStream(self, response, timeout_s)

    async def complete(
        self, model: str, messages: list[Message], params: CallParams, timeout_s: float
    ) -> Completion:
        """Call the provider once within `timeout_s`; raise `ProviderCallError` on any failure."""
        payload = orjson.dumps(self.body(model, messages, params))
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._send(payload)
                try:
                    await response.aread()  # closes the response (the connection goes back to the pool)
                except BaseException:
                    await response.aclose()
                    raise
        except TimeoutError as exc:
            raise ProviderCallError(AttemptOutcome.TIMEOUT, f"no answer within {timeout_s:g}s") from exc
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        status = response.status_code
        if status >= 400:
            raise self._http_error(response)
        try:
            return self.parse(orjson.loads(response.content))
        except Exception as exc:  # any shape we cannot read is the provider's fault: next tier
            raise ProviderCallError(
                AttemptOutcome.MALFORMED, f"unreadable answer: {type(exc).__name__}", status_code=status
            ) from exc

    async def _send(self, payload: bytes) -> httpx.Response:
        """POST `payload`; the response's body is not read yet."""
        request = httpx.Request(
            "POST",
            self.url,
            content=payload,
            headers=self._sent_headers,
            cookies=self._cookies or None,
            extensions=self._extensions,
        )
        response = await self.transport.handle_async_request(request)
        if "set-cookie" in response.headers:
            self._cookies.extract_cookies(response)
        return response

    def _http_error(self, response: httpx.Response) -> ProviderCallError:
        status = response.status_code
        message = _error_text(response)
        if self._key and self._key in message:  # some providers echo the key they refused
            message = message.replace(self._key, "***")
        if status == 429:
            return ProviderCallError(
                AttemptOutcome.RATE_LIMITED,
                message,
                status_code=status,
                retry_after_s=_retry_after(response.headers.get("retry-after")),
            )
        if status >= 500 or status == 408:
            outcome = AttemptOutcome.SERVER_ERROR if status != 408 else AttemptOutcome.TIMEOUT
            return ProviderCallError(outcome, message, status_code=status)
        return ProviderCallError(AttemptOutcome.CLIENT_ERROR, message, status_code=status)


def _transport_error(exc: httpx.HTTPError) -> ProviderCallError:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return ProviderCallError(AttemptOutcome.CONNECTION_ERROR, f"cannot connect: {type(exc).__name__}")
    if isinstance(exc, httpx.TimeoutException):
        return ProviderCallError(AttemptOutcome.TIMEOUT, f"timed out: {type(exc).__name__}")
    return ProviderCallError(AttemptOutcome.CONNECTION_ERROR, f"transport error: {type(exc).__name__}")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from model APIs; the configured default cooldown applies


def _error_text(response: httpx.Response) -> str:
    """The provider's own error message, short, without echoing request content or keys."""
    try:
        data = orjson.loads(response.content)
        err = data.get("error", data) if isinstance(data, dict) else {}
        text = err.get("message") if isinstance(err, dict) else None
    except orjson.JSONDecodeError:
        text = None
    if not isinstance(text, str) or not text:
        text = response.reason_phrase or "error"
    return f"HTTP {response.status_code}: {text[:MAX_ERROR_TEXT]}"

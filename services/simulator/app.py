"""HTTP app of the provider simulator (dev/test only).

Speaks enough of the OpenAI Chat Completions and Anthropic Messages APIs, plain and
streamed (``stream: true``: server-sent events, one content chunk per word), for the
gateway, tests, drills and benchmarks to treat it as a real provider, with latency
and fault injection switchable over ``/_sim/*``. Built on bare ``aiohttp.web`` and
orjson because benchmarks compare direct calls to it against calls through
Switchboard: the simulator must not be the bottleneck.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from services.simulator.completions import generate, last_user_text, pieces, prompt_tokens
from services.simulator.faults import OVERSIZE_BYTES, FaultRule, FaultSpecError, FaultTable

DEFAULT_PROVIDER = "default"
HANG_S = 300.0
SHUTDOWN_TIMEOUT_S = 5.0
CLIENT_MAX_SIZE = 32 * 1024 * 1024

_JSON = "application/json"
_ID_PREFIX = os.urandom(3).hex()
_seq = itertools.count(1)


class SimState:
    """Mutable run-time state shared by all routes of one app."""

    __slots__ = (
        "by_provider",
        "default_latency_ms",
        "faults",
        "global_latency_ms",
        "hanging",
        "provider_latency_ms",
        "stopping",
        "total",
    )

    def __init__(self, latency_ms: float) -> None:
        self.default_latency_ms = float(latency_ms)
        self.global_latency_ms = float(latency_ms)
        self.provider_latency_ms: dict[str, float] = {}
        self.faults = FaultTable()
        self.total = 0
        self.by_provider: dict[str, dict[str, int]] = {}
        self.hanging = 0  # requests currently parked by a "hang" fault
        self.stopping = asyncio.Event()

    def count(self, provider: str, model: str) -> None:
        self.total += 1
        models = self.by_provider.get(provider)
        if models is None:
            models = self.by_provider[provider] = {}
        models[model] = models.get(model, 0) + 1

    def latency_for(self, provider: str) -> float:
        return self.provider_latency_ms.get(provider, self.global_latency_ms)

    def reset(self) -> None:
        self.faults.clear()
        self.total = 0
        self.by_provider = {}
        self.global_latency_ms = self.default_latency_ms
        self.provider_latency_ms.clear()


STATE = web.AppKey("simulator_state", SimState)


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type=_JSON, headers=headers)


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


# --- API dialects ------------------------------------------------------------------------


class _Invalid(Exception):
    """A request that the real provider would reject with 400 invalid_request_error."""


def _check_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Invalid("'messages' is required and must be a non-empty array")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _Invalid("each message must be an object with a string 'role'")
    return messages


def _check_max_tokens(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Invalid(f"'{name}' must be a positive integer")
    return value


def _check_stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _Invalid("'stream' must be a boolean")
    return stream


@dataclass(slots=True)
class Asked:
    """A completion request that passed validation: what the answer is made from."""

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None
    stream: bool
    include_usage: bool = False  # OpenAI's stream_options.include_usage
    system: Any = None  # Anthropic's top-level system prompt


@dataclass(slots=True)
class Answer:
    provider: str
    id: str
    created: int
    model: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    truncated: bool


def _answer(prefix: str, provider: str, asked: Asked, max_tokens: int | None) -> Answer:
    text, completion, truncated = generate(provider, asked.model, last_user_text(asked.messages), max_tokens)
    return Answer(
        provider=provider,
        id=f"{prefix}{_ID_PREFIX}{next(_seq):08x}",
        created=int(time.time()),
        model=asked.model,
        text=text,
        prompt_tokens=prompt_tokens(asked.messages, asked.system),
        completion_tokens=completion,
        truncated=truncated,
    )


def _oversize(text: str, index: int) -> str:
    """The text with its word at `index` (after the label) grown to OVERSIZE_BYTES: still one
    word, so one stream chunk and one completion token."""
    label, _, body = text.partition("] ")
    words = body.split(" ")
    if index < len(words):
        words[index] += "x" * (OVERSIZE_BYTES - len(words[index]))
    return f"{label}] {' '.join(words)}"


# An answer as server-sent events: (head, one event per content chunk, tail).
Events = tuple[list[bytes], list[bytes], list[bytes]]


class OpenAI:
    """OpenAI Chat Completions wire format."""

    id_prefix = "chatcmpl-"
    error_types = {
        400: ("invalid_request_error", None),
        401: ("invalid_request_error", "invalid_api_key"),
        429: ("requests", "rate_limit_exceeded"),
        500: ("server_error", None),
        503: ("server_error", "service_unavailable"),
        504: ("server_error", "timeout"),
    }
    malformed = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": ['

    @staticmethod
    def authorized(request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        return auth[:7].lower() == "bearer " and bool(auth[7:].strip())

    @staticmethod
    def presented_key(request: web.Request) -> str:
        return request.headers.get("Authorization", "")[7:].strip()

    @classmethod
    def error(cls, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        etype, code = cls.error_types.get(status, ("server_error", None))
        payload = {"error": {"message": message, "type": etype, "param": None, "code": code}}
        return _json(payload, status, headers)

    @staticmethod
    def check(model: str, body: dict[str, Any]) -> Asked:
        messages = _check_messages(body)
        mct = body.get("max_completion_tokens")
        if mct is not None:
            max_tokens = _check_max_tokens(mct, "max_completion_tokens")
        else:
            max_tokens = _check_max_tokens(body.get("max_tokens"), "max_tokens")
        stream = _check_stream(body)
        options = body.get("stream_options")
        if options is not None and (not stream or not isinstance(options, dict)):
            raise _Invalid("'stream_options' is only allowed, as an object, when 'stream' is true")
        include_usage = bool(options and options.get("include_usage"))
        return Asked(model, messages, max_tokens, stream, include_usage=include_usage)

    @staticmethod
    def full(answer: Answer) -> bytes:
        completion, prompt = answer.completion_tokens, answer.prompt_tokens
        return orjson.dumps(
            {
                "id": answer.id,
                "object": "chat.completion",
                "created": answer.created,
                "model": answer.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer.text},
                        "logprobs": None,
                        "finish_reason": "length" if answer.truncated else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
        )

    @staticmethod
    def events(answer: Answer, asked: Asked) -> Events:
        """`chat.completion.chunk` events; with include_usage every chunk has `usage: null` and
        one more chunk with no choices carries it, before `[DONE]`."""
        base = {"id": answer.id, "object": "chat.completion.chunk", "created": answer.created}
        base["model"] = answer.model

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            body = {
                **base,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if asked.include_usage:
                body["usage"] = None
            return _sse(body)

        tail = [chunk({}, "length" if answer.truncated else "stop")]
        if asked.include_usage:
            prompt, completion = answer.prompt_tokens, answer.completion_tokens
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            tail.append(_sse({**base, "choices": [], "usage": usage}))
        tail.append(b"data: [DONE]\n\n")
        head = [chunk({"role": "assistant", "content": ""})]
        return (
            head,
            [chunk({"content": piece}) for piece in pieces(answer.text, answer.provider, answer.model)],
            tail,
        )


class Anthropic:
    """Anthropic Messages wire format."""

    id_prefix = "msg_"
    error_types = {
        400: "invalid_request_error",
        401: "authentication_error",
        429: "rate_limit_error",
        500: "api_error",
        503: "overloaded_error",
        504: "timeout_error",
    }
    malformed = b'{"id": "msg_broken", "type": "message", "content": ['

    @staticmethod
    def authorized(request: web.Request) -> bool:
        return bool(request.headers.get("x-api-key", "").strip())

    @staticmethod
    def presented_key(request: web.Request) -> str:
        return request.headers.get("x-api-key", "").strip()

    @classmethod
    def error(cls, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        etype = cls.error_types.get(status, "api_error")
        payload = {"type": "error", "error": {"type": etype, "message": message}}
        return _json(payload, status, headers)

    @staticmethod
    def check(model: str, body: dict[str, Any]) -> Asked:
        messages = _check_messages(body)
        if body.get("max_tokens") is None:
            raise _Invalid("max_tokens: Field required")
        max_tokens = _check_max_tokens(body["max_tokens"], "max_tokens")
        system = body.get("system")
        if system is not None and not isinstance(system, str | list):
            raise _Invalid("'system' must be a string or an array of text blocks")
        return Asked(model, messages, max_tokens, _check_stream(body), system=system)

    @staticmethod
    def _message(answer: Answer, content: list, stop_reason: str | None, output_tokens: int) -> dict:
        return {
            "id": answer.id,
            "type": "message",
            "role": "assistant",
            "model": answer.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": output_tokens},
        }

    @classmethod
    def full(cls, answer: Answer) -> bytes:
        stop = "max_tokens" if answer.truncated else "end_turn"
        content = [{"type": "text", "text": answer.text}]
        return orjson.dumps(cls._message(answer, content, stop, answer.completion_tokens))

    @classmethod
    def events(cls, answer: Answer, asked: Asked) -> Events:
        """message_start, content_block_start, ping, one content_block_delta per chunk, then
        content_block_stop, message_delta (stop reason, output tokens) and message_stop."""
        head = [
            _sse({"type": "message_start", "message": cls._message(answer, [], None, 1)}, "message_start"),
            _sse(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                "content_block_start",
            ),
            _sse({"type": "ping"}, "ping"),
        ]
        chunks = [
            _sse(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                "content_block_delta",
            )
            for piece in pieces(answer.text, answer.provider, answer.model)
        ]
        stop = "max_tokens" if answer.truncated else "end_turn"
        tail = [
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            _sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": answer.completion_tokens},
                },
                "message_delta",
            ),
            _sse({"type": "message_stop"}, "message_stop"),
        ]
        return head, chunks, tail


def _sse(payload: dict, event: str | None = None) -> bytes:
    data = b"data: " + orjson.dumps(payload) + b"\n\n"
    return b"event: " + event.encode() + b"\n" + data if event else data


# --- completion pipeline -----------------------------------------------------------------


async def _hang(state: SimState) -> None:
    """Park the request until the client gives up (handler cancelled) or shutdown."""
    state.hanging += 1
    try:
        async with asyncio.timeout(HANG_S):
            await state.stopping.wait()
    except TimeoutError:
        pass
    finally:
        state.hanging -= 1


async def _fault_response(
    api: type[OpenAI] | type[Anthropic], rule: FaultRule, state: SimState, provider: str, key: str
) -> web.Response:
    kind = rule.kind
    if kind == "401":  # as some real providers do: the refused key, verbatim, in the message
        return api.error(401, f"Incorrect API key provided: {key}. Check your key (simulated).")
    if kind == "429":
        secs = _fmt_seconds(rule.retry_after_s)
        headers = {
            "Retry-After": secs,
            "retry-after-ms": str(int(rule.retry_after_s * 1000)),
        }
        return api.error(429, "Rate limit exceeded (simulated)", headers)
    if kind == "hang":
        await _hang(state)
        return api.error(504, "Simulated hang ended")
    if kind == "malformed":
        latency = state.latency_for(provider)
        if latency > 0:
            await asyncio.sleep(latency / 1000.0)
        return web.Response(body=api.malformed, content_type=_JSON)
    if kind == "400":
        return api.error(400, "Invalid request (simulated)")
    if kind == "503":
        return api.error(503, "Service unavailable (simulated)")
    return api.error(500, "Internal server error (simulated)")


async def _complete(
    request: web.Request, api: type[OpenAI] | type[Anthropic], provider: str
) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str) or not model:
        model = None
    state.count(provider, model or "unknown")

    if not api.authorized(request):
        return api.error(401, "Missing or empty API key (simulated provider)")
    if not isinstance(body, dict):
        return api.error(400, "Request body is not valid JSON")
    if model is None:
        return api.error(400, "'model' is required and must be a non-empty string")

    # Validate before matching faults so a malformed request never consumes a rule.
    try:
        asked = api.check(model, body)
    except _Invalid as exc:
        return api.error(400, str(exc))

    latency = state.latency_for(provider)
    max_tokens, break_after, oversize_at = asked.max_tokens, None, None
    rule = state.faults.match(provider, model)
    if rule is not None:
        if rule.kind == "latency":
            latency += rule.latency_ms
        elif rule.kind == "overrun":
            max_tokens = None
        elif rule.kind == "break":
            break_after = rule.after_chunks
        elif rule.kind == "oversize":
            oversize_at = rule.after_chunks
        elif rule.kind != "drip":
            return await _fault_response(api, rule, state, provider, api.presented_key(request))
    if latency > 0:
        await asyncio.sleep(latency / 1000.0)
    answer = _answer(api.id_prefix, provider, asked, max_tokens)
    if oversize_at is not None:
        answer.text = _oversize(answer.text, oversize_at)
    if asked.stream:
        if rule is not None and rule.kind == "drip":
            return await _drip(request, api.events(answer, asked), rule, state)
        return await _stream(request, api.events(answer, asked), break_after)
    if break_after is not None:
        return await _cut(request, api.full(answer))
    return web.Response(body=api.full(answer), content_type=_JSON)


async def _stream(request: web.Request, events: Events, break_after: int | None) -> web.StreamResponse:
    """Send the events; with `break_after`, only the head and that many content chunks, then
    drop the connection (no end event, no terminating chunk)."""
    head, chunks, tail = events
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    if break_after is None:
        await response.write(b"".join((*head, *chunks, *tail)))
        await response.write_eof()
        return response
    await response.write(b"".join((*head, *chunks[:break_after])))
    return _drop(request, response)


async def _drip(request: web.Request, events: Events, rule: FaultRule, state: SimState) -> web.StreamResponse:
    """One content chunk every `latency_ms` while the rule is in place (then keep-alive comments,
    as providers ping, once the chunks run out); the rest at once when it is removed."""
    head, chunks, tail = events
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(b"".join(head))
    rest = list(chunks)
    while rule in state.faults and not state.stopping.is_set():
        await asyncio.sleep(rule.latency_ms / 1000.0)
        await response.write(rest.pop(0) if rest else b": keep-alive\n\n")
    await response.write(b"".join((*rest, *tail)))
    await response.write_eof()
    return response


async def _cut(request: web.Request, body: bytes) -> web.StreamResponse:
    """Half of a non-streamed body, then the connection dropped."""
    response = web.StreamResponse(headers={"Content-Type": _JSON})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    return _drop(request, response)


def _drop(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    if request.transport is not None:
        request.transport.close()  # what was written is flushed first
    return response


def _route(api: type[OpenAI] | type[Anthropic], named: bool) -> Callable[[web.Request], Any]:
    if named:

        async def handler(request: web.Request) -> web.Response:
            return await _complete(request, api, request.match_info["provider"])
    else:

        async def handler(request: web.Request) -> web.Response:
            return await _complete(request, api, DEFAULT_PROVIDER)

    return handler


# --- control plane -----------------------------------------------------------------------


async def _read_json(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(
            body=orjson.dumps({"error": "body is not valid JSON"}), content_type=_JSON
        ) from exc


def _bad(message: str) -> web.Response:
    return _json({"error": message}, 400)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def add_fault(request: web.Request) -> web.Response:
    spec = await _read_json(request)
    try:
        rule = request.app[STATE].faults.add_spec(spec)
    except FaultSpecError as exc:
        return _bad(str(exc))
    return _json({"id": rule.id})


async def list_faults(request: web.Request) -> web.Response:
    return _json({"faults": request.app[STATE].faults.snapshot()})


async def clear_faults(request: web.Request) -> web.Response:
    request.app[STATE].faults.clear()
    return _json({"status": "ok"})


async def delete_fault(request: web.Request) -> web.Response:
    if not request.app[STATE].faults.remove(request.match_info["fault_id"]):
        return _json({"error": "no such fault"}, 404)
    return _json({"status": "ok"})


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json({"total": state.total, "by_provider": state.by_provider})


async def reset(request: web.Request) -> web.Response:
    """Clear fault rules and stats, and restore the start-up base latency."""
    request.app[STATE].reset()
    return _json({"status": "ok"})


async def get_latency(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json({"latency_ms": state.global_latency_ms, "by_provider": state.provider_latency_ms})


async def set_latency(request: web.Request) -> web.Response:
    """Set the global base latency, or one provider's (``latency_ms: null`` drops it)."""
    spec = await _read_json(request)
    if not isinstance(spec, dict):
        return _bad("body must be a JSON object")
    provider = spec.get("provider")
    latency = spec.get("latency_ms")
    if provider is not None and not isinstance(provider, str):
        return _bad("provider must be a string or null")
    if latency is not None and (
        isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0
    ):
        return _bad("latency_ms must be a non-negative number")
    state = request.app[STATE]
    if provider is None:
        if latency is None:
            return _bad("latency_ms is required for the global latency")
        state.global_latency_ms = float(latency)
    elif latency is None:
        state.provider_latency_ms.pop(provider, None)
    else:
        state.provider_latency_ms[provider] = float(latency)
    return _json({"status": "ok"})


async def _on_shutdown(app: web.Application) -> None:
    # Release "hang" requests so shutdown does not wait for them.
    app[STATE].stopping.set()


def make_app(latency_ms: float = 0) -> web.Application:
    """Build the simulator app; ``latency_ms`` is the base latency for every provider."""
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[STATE] = SimState(latency_ms)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_post("/v1/chat/completions", _route(OpenAI, named=False))
    app.router.add_post("/v1/messages", _route(Anthropic, named=False))
    app.router.add_post("/p/{provider}/v1/chat/completions", _route(OpenAI, named=True))
    app.router.add_post("/p/{provider}/v1/messages", _route(Anthropic, named=True))
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/_sim/faults", add_fault)
    app.router.add_get("/_sim/faults", list_faults)
    app.router.add_delete("/_sim/faults", clear_faults)
    app.router.add_delete("/_sim/faults/{fault_id}", delete_fault)
    app.router.add_get("/_sim/stats", stats)
    app.router.add_post("/_sim/reset", reset)
    app.router.add_get("/_sim/latency", get_latency)
    app.router.add_put("/_sim/latency", set_latency)
    return app


async def start(host: str = "127.0.0.1", port: int = 0, latency_ms: float = 0) -> tuple[web.AppRunner, int]:
    """Start the simulator in the running loop; returns (runner, bound port).

    ``port=0`` picks a free port. Stop it with ``await runner.cleanup()``. Handlers are
    cancelled when their client disconnects, so a "hang" fault ends with the client.
    """
    runner = web.AppRunner(
        make_app(latency_ms),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    actual_port = runner.addresses[0][1]
    return runner, actual_port

"""The OpenAI-compatible HTTP API: `POST /v1/chat/completions` and `GET /v1/models`.

A request walks straight through: the API key names the agent; the body becomes the SDK's
`InvokeRequest`; it is sent on the agent's own invoke subject over the service's one NATS
connection; the result becomes a `chat.completion`, or an error response built in one place
(`outcomes`). `Idempotency-Key` (else `x-request-id`) is the invocation id, so a retry with
the same key is answered from the first invocation; `X-Session-Id` is the session.

A bare ASGI application on uvicorn: two routes, each reading the few headers it needs from the
scope and answering with pre-encoded bytes. A framework's routing, middleware and request and
response objects were a measured part of what the ingress adds to an invocation
(docs/performance.md). Streams are Starlette's `StreamingResponse` (through FastAPI), which
also stops reading the invocation when the client goes away.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter, ValidationError

from services.ingress import openai_wire, outcomes
from shared.contracts import Identifier, InvokeResult
from shared.telemetry import metrics
from switchboard_sdk import errors

if TYPE_CHECKING:
    from services.ingress.service import IngressService

log = logging.getLogger("switchboard.ingress")

CHAT = "/v1/chat/completions"
MODELS = "/v1/models"
_ID = TypeAdapter(Identifier)
# The request headers the API reads (ASGI gives them lower-cased, as bytes).
_READ = {
    b"authorization",
    b"idempotency-key",
    b"x-request-id",
    b"x-session-id",
    b"traceparent",
    b"tracestate",
}
_JSON = (b"content-type", b"application/json")

Headers = dict[str, str]
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]] | StreamingResponse


class Api:
    """The ASGI application; `svc` sends the invocations and holds the keys and the policy."""

    def __init__(self, svc: IngressService) -> None:
        self.svc = svc
        self.routes: dict[str, tuple[str, Callable[..., Awaitable[Answer]]]] = {
            CHAT: ("POST", self.chat_completions),
            MODELS: ("GET", self.models),
        }

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # no lifespan (the service starts and stops it), no websockets
            return
        started = time.perf_counter()
        path, method = scope["path"], scope["method"]
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in _READ}
        route = self.routes.get(path)
        if route is None or route[0] != method:  # not counted: any path
            await _send(send, *_not_routed(path, method, route))
            return
        try:
            answer = await route[1](headers, receive, started)
        except errors.SwitchboardError as exc:
            answer = _error(path, started, headers, exc)
        except _ClientGone:
            return
        except Exception:
            log.exception("request failed: %s %s", method, path)
            answer = _error(path, started, headers, errors.SwitchboardError("internal error"))
        if isinstance(answer, StreamingResponse):
            await answer(scope, receive, send)
        else:
            await _send(send, *answer)

    async def chat_completions(self, headers: Headers, receive, started: float) -> Answer:
        svc = self.svc
        agent = await svc.keys.agent_of(_bearer(headers))
        body = _parse(await _body(receive), svc.settings.max_payload_bytes)
        try:
            invoke = openai_wire.to_invoke(body, _invocation_id(headers), agent, _session(headers))
        except ValidationError as exc:
            raise _from_validation(exc) from exc
        if body.stream:
            return await self._stream(invoke, headers, body, started)
        reply = await svc.invoke(invoke, headers)
        doc = orjson.loads(reply)
        if doc.get("status") in openai_wire.ANSWERED:
            answer = orjson.dumps(openai_wire.completion(doc))
            return _respond(CHAT, started, 200, answer, [], invoke.invocation_id)
        result = openai_wire.result(reply)  # a refusal: read in full, as the SDK reads it
        status, answer, extra = outcomes.refusal(result)
        return _respond(CHAT, started, status, orjson.dumps(answer), _raw(extra), result.invocation_id)

    async def models(self, headers: Headers, receive, started: float) -> Answer:
        agent = await self.svc.keys.agent_of(_bearer(headers))
        listed = openai_wire.models(self.svc.workflows_for(agent), self.svc.created)
        return _respond(MODELS, started, 200, orjson.dumps(listed), [])

    async def _stream(
        self, invoke, headers: Headers, body: openai_wire.ChatCompletionRequest, started: float
    ) -> Answer:
        """Server-sent events once the first chunk is there; an invocation refused before it
        (budget, pause, a workflow that does not stream, every tier failed) is the plain error
        response."""
        messages = self.svc.stream(invoke, headers)
        try:
            first = await anext(messages)
        except BaseException:
            await messages.aclose()
            raise
        if isinstance(first, InvokeResult) and (refused := outcomes.refusal(first)) is not None:
            await messages.aclose()
            status, answer, extra = refused
            return _respond(CHAT, started, status, orjson.dumps(answer), _raw(extra), first.invocation_id)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def events():
            try:
                async for event in openai_wire.events(first, messages, include_usage):
                    yield event
            finally:
                await messages.aclose()

        _count(CHAT, 200, started)  # timed to the first chunk
        sent = {"x-request-id": invoke.invocation_id, "cache-control": "no-cache"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=sent)


class _ClientGone(Exception):
    """The client went away before its request was read: nothing to answer."""


async def _body(receive) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientGone
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _send(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append(_JSON)
    headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# (route, status) -> the metric children: labels() takes a lock and builds a key on every call
_COUNTED: dict[tuple[str, int], tuple] = {}


def _count(route: str, status: int, started: float) -> None:
    children = _COUNTED.get((route, status))
    if children is None:
        children = _COUNTED[(route, status)] = (
            metrics.INGRESS_REQUESTS.labels(route, str(status)),
            metrics.INGRESS_LATENCY.labels(route),
        )
    children[0].inc()
    children[1].observe(time.perf_counter() - started)


def _respond(
    route: str,
    started: float,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    invocation_id: str | None = None,
) -> Answer:
    """The one place an answer is made: counted, timed, and tagged with the invocation id."""
    _count(route, status, started)
    if invocation_id:
        headers.append((b"x-request-id", invocation_id.encode()))
    return status, body, headers


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers.items()]


def _error(route: str, started: float, headers: Headers, exc: errors.SwitchboardError) -> Answer:
    param = exc.details[0].get("param") if exc.details else None
    status, body, extra = outcomes.error_body(exc, param=param)
    invocation_id = headers.get("idempotency-key") or headers.get("x-request-id")
    return _respond(route, started, status, orjson.dumps(body), _raw(extra), invocation_id)


def _not_routed(path: str, method: str, route) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """An unknown route or method, in OpenAI's error shape too."""
    if route is None:
        status, kind, detail, headers = 404, "not_found_error", "Not Found", []
    else:
        status, kind, detail = 405, "invalid_request_error", "Method Not Allowed"
        headers = [(b"allow", route[0].encode())]
    error = {"message": f"{method} {path}: {detail}", "type": kind, "code": None, "param": None}
    return status, orjson.dumps({"error": error}), headers


def _invalid(param: str, message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(message, details=[{"param": param}])


def _bearer(headers: Headers) -> str:
    scheme, _, key = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise errors.Unauthorized("no API key: send `Authorization: Bearer <key>`")
    return key.strip()


def _parse(raw: bytes, limit: int) -> openai_wire.ChatCompletionRequest:
    if len(raw) > limit:
        raise errors.PayloadTooLarge(f"the request body is {len(raw)} bytes; the limit is {limit}")
    try:
        return openai_wire.ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise _from_validation(exc) from exc


def _from_validation(exc: ValidationError) -> errors.InvalidRequest:
    first = exc.errors(include_url=False, include_input=False)[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return errors.InvalidRequest(f"{param or 'body'}: {first['msg']}", details=[{"param": param}])


def _invocation_id(headers: Headers) -> str:
    given = headers.get("idempotency-key") or headers.get("x-request-id")
    if given is None:
        return secrets.token_hex(16)
    try:
        return _ID.validate_python(given)
    except ValidationError:
        raise _invalid("Idempotency-Key", "an idempotency key is 1-128 of A-Z a-z 0-9 . _ : -") from None


def _session(headers: Headers) -> str | None:
    session = headers.get("x-session-id")
    if session is None:
        return None
    try:
        return _ID.validate_python(session)
    except ValidationError:
        raise _invalid("X-Session-Id", "a session id is 1-128 of A-Z a-z 0-9 . _ : -") from None

"""The OpenAI-compatible HTTP API: `POST /v1/chat/completions` and `GET /v1/models`.

A request walks straight through: the API key names the agent; the body becomes the SDK's
`InvokeRequest`; it is sent on the agent's own invoke subject over the service's one NATS
connection; the result becomes a `chat.completion`, or an error response built in one place
(`outcomes`). `Idempotency-Key` (else `x-request-id`) is the invocation id, so a retry with
the same key is answered from the first invocation; `X-Session-Id` is the session.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import TYPE_CHECKING

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.ingress import openai_wire, outcomes
from shared.contracts import Identifier, InvokeResult
from shared.telemetry import metrics
from switchboard_sdk import errors

if TYPE_CHECKING:
    from services.ingress.service import IngressService

JSON = "application/json"
CHAT = "/v1/chat/completions"
MODELS = "/v1/models"
_ID = TypeAdapter(Identifier)


def build(svc: IngressService) -> FastAPI:
    app = FastAPI(
        title="Switchboard ingress",
        description="OpenAI-compatible chat completions; each request is a Switchboard invocation.",
        version="1",
        docs_url=None,
        redoc_url=None,
    )

    async def chat_completions(request: Request) -> Response:
        started = request.state.started = time.perf_counter()
        agent = await svc.keys.agent_of(_bearer(request))
        body = _parse(await request.body(), svc.settings.max_payload_bytes)
        try:
            invoke = openai_wire.to_invoke(body, _invocation_id(request), agent, _session(request))
        except ValidationError as exc:
            raise _from_validation(exc) from exc
        if body.stream:
            return await _stream(svc, request, invoke, body, started)
        result = await svc.invoke(invoke, request.headers)
        refused = outcomes.refusal(result)
        status, answer, headers = refused or (200, openai_wire.completion(result), {})
        return _respond(CHAT, started, status, answer, headers, result.invocation_id)

    async def models(request: Request) -> Response:
        started = request.state.started = time.perf_counter()
        agent = await svc.keys.agent_of(_bearer(request))
        return _respond(MODELS, started, 200, openai_wire.models(svc.workflows_for(agent), svc.created), {})

    # Plain Starlette routes: each handler reads its request itself, so FastAPI's per-request
    # dependency and validation machinery would be pure cost on the hot path.
    app.add_route(CHAT, chat_completions, methods=["POST"])
    app.add_route(MODELS, models, methods=["GET"])

    @app.exception_handler(errors.SwitchboardError)
    async def _coded(request: Request, exc: errors.SwitchboardError) -> Response:
        param = exc.details[0].get("param") if exc.details else None
        status, body, headers = outcomes.error_body(exc, param=param)
        started = getattr(request.state, "started", time.perf_counter())
        invocation_id = request.headers.get("idempotency-key") or request.headers.get("x-request-id")
        return _respond(request.url.path, started, status, body, headers, invocation_id)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        """A fault of our own: still an OpenAI error object (the traceback goes to the log)."""
        return await _coded(request, errors.SwitchboardError(f"internal error: {type(exc).__name__}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        """An unknown route or method, in OpenAI's error shape too (not counted: any path)."""
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        error = {"message": f"{request.method} {request.url.path}: {exc.detail}", "type": kind}
        body = {"error": {**error, "code": None, "param": None}}
        return Response(orjson.dumps(body), status_code=exc.status_code, media_type=JSON)

    return app


async def _stream(
    svc: IngressService, request: Request, invoke, body: openai_wire.ChatCompletionRequest, started: float
) -> Response:
    """Server-sent events once the first chunk is there; an invocation refused before it (budget,
    pause, a workflow that does not stream, every tier failed) is the plain error response."""
    messages = svc.stream(invoke, request.headers)
    try:
        first = await anext(messages)
    except BaseException:
        await messages.aclose()
        raise
    if isinstance(first, InvokeResult) and (refused := outcomes.refusal(first)) is not None:
        await messages.aclose()
        return _respond(CHAT, started, *refused, first.invocation_id)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events():
        async with contextlib.aclosing(messages):
            async for event in openai_wire.events(first, messages, include_usage):
                yield event

    metrics.INGRESS_REQUESTS.labels(CHAT, "200").inc()
    metrics.INGRESS_LATENCY.labels(CHAT).observe(time.perf_counter() - started)  # to the first chunk
    headers = {"x-request-id": invoke.invocation_id, "cache-control": "no-cache"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _respond(
    route: str, started: float, status: int, body: dict, headers: dict, invocation_id: str | None = None
) -> Response:
    """The one place a response is made: counted, timed, and tagged with the invocation id."""
    metrics.INGRESS_REQUESTS.labels(route, str(status)).inc()
    metrics.INGRESS_LATENCY.labels(route).observe(time.perf_counter() - started)
    if invocation_id:
        headers = {**headers, "x-request-id": invocation_id}
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def _invalid(param: str, message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(message, details=[{"param": param}])


def _bearer(request: Request) -> str:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
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


def _invocation_id(request: Request) -> str:
    given = request.headers.get("idempotency-key") or request.headers.get("x-request-id")
    if given is None:
        return uuid.uuid4().hex
    try:
        return _ID.validate_python(given)
    except ValidationError:
        raise _invalid("Idempotency-Key", "an idempotency key is 1-128 of A-Z a-z 0-9 . _ : -") from None


def _session(request: Request) -> str | None:
    session = request.headers.get("x-session-id")
    if session is None:
        return None
    try:
        return _ID.validate_python(session)
    except ValidationError:
        raise _invalid("X-Session-Id", "a session id is 1-128 of A-Z a-z 0-9 . _ : -") from None

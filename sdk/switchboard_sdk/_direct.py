"""Passthrough: call a workflow's providers straight from the agent, in policy order.

Used only while the control plane is unreachable, for workflows whose policy says
`degradation: passthrough`. It speaks the two provider APIs Switchboard knows (OpenAI chat
completions, Anthropic Messages) with the standard library's HTTP client in a worker thread,
so the SDK needs nothing beyond nats-py, pydantic and orjson. The gateway's adapters
(`shared.providers`) do the same mapping on httpx; this copy is deliberately small: no pooling,
no streaming, no routing state — nothing is enforced here, and the record says so.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import orjson

from switchboard_sdk.contracts import (
    Attempt,
    AttemptOutcome,
    DegradationPlan,
    DirectTier,
    ErrorInfo,
    InvokeRequest,
    InvokeResult,
    Status,
    Usage,
)

ANTHROPIC_VERSION = "2023-06-01"
MAX_ERROR_TEXT = 300


@dataclass(slots=True)
class _Answer:
    output: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


class _Failed(Exception):
    def __init__(self, outcome: AttemptOutcome, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        self.status_code = status_code


async def invoke(plan: DegradationPlan, request: InvokeRequest) -> InvokeResult:
    """Walk the plan's tiers until one answers; a client error (4xx other than 408/429) stops."""
    started = time.monotonic()
    ceiling = plan.max_tokens_per_invocation
    max_tokens = min(request.max_tokens or ceiling, ceiling) if ceiling else (request.max_tokens or 1024)
    attempts: list[Attempt] = []
    for i, tier in enumerate(plan.tiers):
        t0 = time.monotonic()
        try:
            answer = await asyncio.to_thread(_call, tier, request, max_tokens)
        except _Failed as exc:
            attempts.append(
                Attempt(
                    tier=i,
                    provider=tier.provider,
                    model=tier.model,
                    outcome=exc.outcome,
                    latency_ms=_ms(t0),
                    status_code=exc.status_code,
                    reason=exc.message,
                )
            )
            if exc.outcome is AttemptOutcome.CLIENT_ERROR:
                break
            continue
        attempts.append(
            Attempt(
                tier=i,
                provider=tier.provider,
                model=tier.model,
                outcome=AttemptOutcome.OK,
                latency_ms=_ms(t0),
            )
        )
        return InvokeResult(
            invocation_id=request.invocation_id,
            status=Status.SUCCESS if i == 0 else Status.FALLBACK,
            workflow=request.workflow,
            provider=tier.provider,
            model=tier.model,
            output=answer.output,
            finish_reason=answer.finish_reason,
            usage=Usage(prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens),
            latency_ms=_ms(started),
            attempts=attempts,
            config_version=plan.config_version,
            enforced=False,
        )
    last = attempts[-1].reason if attempts else "the workflow has no tiers"
    return InvokeResult(
        invocation_id=request.invocation_id,
        status=Status.ERROR,
        workflow=request.workflow,
        latency_ms=_ms(started),
        attempts=attempts,
        error=ErrorInfo(
            code="all_tiers_failed", message=f"passthrough: no tier answered ({last})", retryable=True
        ),
        config_version=plan.config_version,
        enforced=False,
    )


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 2)


def _call(tier: DirectTier, request: InvokeRequest, max_tokens: int) -> _Answer:
    key = os.environ.get(tier.api_key_env, "") if tier.api_key_env else ""
    if tier.kind == "anthropic":
        url, headers, body, parse = _anthropic(tier, request, max_tokens, key)
    else:
        url, headers, body, parse = _openai(tier, request, max_tokens, key)
    http = urllib.request.Request(url, data=orjson.dumps(body), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(http, timeout=tier.timeout_ms / 1000) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raise _http_failure(exc.code, exc.read(), key) from exc
    except TimeoutError as exc:
        raise _Failed(AttemptOutcome.TIMEOUT, f"no answer within {tier.timeout_ms} ms") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise _Failed(AttemptOutcome.CONNECTION_ERROR, f"cannot connect: {type(exc).__name__}") from exc
    try:
        return parse(orjson.loads(raw))
    except Exception as exc:  # any shape we cannot read is the provider's fault: next tier
        raise _Failed(AttemptOutcome.MALFORMED, f"unreadable answer: {type(exc).__name__}", status) from exc


def _http_failure(status: int, raw: bytes, key: str) -> _Failed:
    try:
        data = orjson.loads(raw)
        err = data.get("error", data) if isinstance(data, dict) else {}
        text = err.get("message") if isinstance(err, dict) else None
    except orjson.JSONDecodeError:
        text = None
    message = f"HTTP {status}: {(text if isinstance(text, str) and text else 'error')[:MAX_ERROR_TEXT]}"
    if key and key in message:  # some providers echo the key they refused
        message = message.replace(key, "***")
    if status == 429:
        return _Failed(AttemptOutcome.RATE_LIMITED, message, status)
    if status == 408:
        return _Failed(AttemptOutcome.TIMEOUT, message, status)
    if status >= 500:
        return _Failed(AttemptOutcome.SERVER_ERROR, message, status)
    return _Failed(AttemptOutcome.CLIENT_ERROR, message, status)


def _params(request: InvokeRequest, body: dict, stop_key: str, max_temperature: float) -> dict:
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, max_temperature)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body[stop_key] = request.stop
    return body


def _openai(tier: DirectTier, request: InvokeRequest, max_tokens: int, key: str):
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    body = {
        "model": tier.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "max_tokens": max_tokens,
    }

    def parse(data: dict) -> _Answer:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        content = choice["message"].get("content") or ""
        if not isinstance(content, str):
            raise TypeError("content is not text")
        return _Answer(
            content,
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            choice.get("finish_reason"),
        )

    url = tier.base_url.rstrip("/") + "/chat/completions"
    return url, headers, _params(request, body, "stop", 2.0), parse


def _anthropic(tier: DirectTier, request: InvokeRequest, max_tokens: int, key: str):
    headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
    if key:
        headers["x-api-key"] = key
    system = "\n\n".join(m.content for m in request.messages if m.role == "system")
    body: dict = {
        "model": tier.model,
        "messages": [
            {"role": "assistant" if m.role == "assistant" else "user", "content": m.content}
            for m in request.messages
            if m.role != "system"
        ],
        "max_tokens": max_tokens,
    }
    if system:
        body["system"] = system

    def parse(data: dict) -> _Answer:
        text = "".join(part["text"] for part in data["content"] if part.get("type") == "text")
        usage = data.get("usage") or {}
        reason = data.get("stop_reason")
        reason = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}.get(reason, reason)
        return _Answer(text, int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)), reason)

    url = tier.base_url.rstrip("/") + "/messages"
    return url, headers, _params(request, body, "stop_sequences", 1.0), parse

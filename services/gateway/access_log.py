"""The gateway's one log line per answered request, in one shape whatever the answer: an
invocation that ran (or was refused by its budget or a dependency), the replay of a finished
one, or a request refused before it ran (invalid, unknown workflow, duplicate in flight,
conflicting id). Each line says what was asked (`max_tokens`, the prompt-token estimate) so
ceilings can be set from what normal traffic asks for."""

from __future__ import annotations

import logging
from enum import StrEnum

import orjson

from shared.contracts import InvokeRequest, InvokeResult, Status, Usage

log = logging.getLogger("switchboard.gateway")

ASKED = ("workflow", "invocation_id", "session_id", "agent", "max_tokens")


class Answer(StrEnum):
    INVOCATION = "invocation"  # the invocation ran, or its budget or a dependency refused it
    REPLAY = "replay"  # a retry of a finished invocation, answered with its stored reply
    REFUSED = "refused"  # not run: invalid, unknown workflow, duplicate in flight, conflicting id


def invocation(
    req: InvokeRequest, result: InvokeResult, *, estimate: int, attempts: int, trace_id: str | None
) -> None:
    _write(Answer.INVOCATION, _asked(req), result, estimate=estimate, attempts=attempts, trace_id=trace_id)


def replay(req: InvokeRequest, stored: InvokeResult, *, latency_ms: float, trace_id: str | None) -> None:
    """The stored answer was sent again: no tokens or attempts were spent on this request."""
    result = stored.model_copy(update={"latency_ms": latency_ms, "usage": Usage()})
    _write(Answer.REPLAY, _asked(req), result, estimate=None, attempts=0, trace_id=trace_id)


def refused(raw: bytes, result: InvokeResult, *, trace_id: str | None) -> None:
    """What can be read of a request that was not run (it may not even be JSON)."""
    _write(Answer.REFUSED, _asked_raw(raw), result, estimate=None, attempts=0, trace_id=trace_id)


def _asked(req: InvokeRequest) -> dict:
    return {name: getattr(req, name) for name in ASKED}


def _asked_raw(raw: bytes) -> dict:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return dict.fromkeys(ASKED)
    asked = {name: body.get(name) for name in ASKED}
    return {  # echo only well-typed values of the request into the log
        name: value if isinstance(value, int if name == "max_tokens" else str) else None
        for name, value in asked.items()
    }


def _write(
    answer: Answer, asked: dict, result: InvokeResult, *, estimate, attempts: int, trace_id: str | None
) -> None:
    log.info(
        "invocation",
        extra={
            "answer": answer.value,
            **asked,
            "estimated_prompt_tokens": estimate,
            "status": result.status.value,
            "provider": result.provider,
            "model": result.model,
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "latency_ms": result.latency_ms,
            "attempts": attempts,
            "fallback": result.status is Status.FALLBACK,
            "error_code": result.error.code if result.error else None,
            "config_version": result.config_version,
            "trace_id": trace_id,
        },
    )

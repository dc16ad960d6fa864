"""The OpenAI chat-completions wire format, and its translation to and from Switchboard's.

A request is validated as a whole (unknown fields are refused, naming the field, rather than
silently ignored), then becomes the `InvokeRequest` the SDK would send: `model` names the
workflow, the messages and sampling parameters carry over, `metadata` (and `user`) become the
invocation's metadata, which routing and review rules can match.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from shared import codec
from shared.contracts import InvokeRequest, InvokeResult, MetadataInput, Status, StreamChunk
from switchboard_sdk import errors

# The statuses of an invocation that answered (anything else is an error response).
ANSWERED = (Status.SUCCESS.value, Status.FALLBACK.value)
# OpenAI's newer system role; Switchboard (and every provider it speaks) calls it `system`.
_ROLES = {"developer": "system"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart]
    name: str | None = None
    tool_call_id: str | None = None


class StreamOptions(_Strict):
    include_usage: bool | None = None


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # OpenAI's newer name; wins over max_tokens
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    n: Literal[1] | None = None  # one choice per invocation
    stream: bool = False
    stream_options: StreamOptions | None = None
    metadata: dict[str, MetadataInput] | None = None  # OpenAI's are strings; numbers and booleans too
    user: str | None = None  # the end user, recorded as metadata `user`


def to_invoke(
    body: ChatCompletionRequest, invocation_id: str, agent: str, session_id: str | None
) -> InvokeRequest:
    """The Switchboard invocation of an OpenAI request (validated: raises pydantic's error, its
    location named as in the OpenAI request)."""
    metadata: dict = dict(body.metadata or {})
    if body.user is not None:
        metadata["user"] = body.user
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    return InvokeRequest.model_validate(
        {
            "invocation_id": invocation_id,
            "workflow": body.model,
            "session_id": session_id,
            "agent": agent,
            "messages": [
                {
                    "role": _ROLES.get(m.role, m.role),
                    "content": m.content
                    if isinstance(m.content, str)
                    else "".join(p.text for p in m.content),
                    "name": m.name,
                }
                for m in body.messages
            ],
            "max_tokens": body.max_completion_tokens or body.max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "stop": stop,
            "metadata": metadata,
            "stream": True if body.stream else None,
        }
    )


def result(reply: bytes) -> InvokeResult:
    return codec.decode(reply, InvokeResult)


def completion(result: dict) -> dict:
    """A `chat.completion` object of an answered invocation's result (as JSON: the answer is
    read once, with orjson); `model` is the model that answered, and `switchboard` says what
    Switchboard did (status, provider, attempts, trace and policy version)."""
    usage = result.get("usage") or {}
    prompt, completion_tokens = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return {
        "id": f"chatcmpl-{result['invocation_id']}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.get("output") or ""},
                "finish_reason": result.get("finish_reason") or "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        },
        "switchboard": switchboard_block(result),
    }


async def events(
    first: StreamChunk | InvokeResult, rest: AsyncIterator[StreamChunk | InvokeResult], include_usage: bool
) -> AsyncIterator[bytes]:
    """A streamed invocation as OpenAI's server-sent events: a role chunk, one chunk per piece,
    then a chunk with the finish reason, usage and the `switchboard` block (with
    `stream_options.include_usage`, one more chunk with no choices and the usage, as OpenAI
    sends), then `[DONE]`. A stream that did not end as an answer ends with an error event and
    no `[DONE]`: never a clean end (the OpenAI client raises `APIError`)."""
    base = {"id": f"chatcmpl-{first.invocation_id}", "object": "chat.completion.chunk"}
    base["created"] = int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _event({**base, "choices": [choice], **extra})

    message = first
    try:
        yield chunk({"role": "assistant", "content": ""})
        while isinstance(message, StreamChunk):
            yield chunk({"content": message.delta})
            message = await anext(rest)
    except errors.SwitchboardError as exc:  # the stream broke on its way here
        yield _event({"error": _error(exc.code, exc.message)})
        return
    result = message
    if result.status not in (Status.SUCCESS, Status.FALLBACK):
        error = result.error or errors.to_wire(errors.SwitchboardError(f"ended {result.status.value}"))
        yield _event({"error": {**_error(error.code, error.message), "invocation_id": result.invocation_id}})
        return
    usage = {
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "total_tokens": result.usage.prompt_tokens + result.usage.completion_tokens,
    }
    base["model"] = result.model
    block = switchboard_block(result.model_dump(mode="json"))
    yield chunk({}, result.finish_reason or "stop", usage=usage, switchboard=block)
    if include_usage:
        yield _event({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def _event(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _error(code: str, message: str) -> dict:
    return {"message": message, "type": "api_error", "code": code, "param": None}


def switchboard_block(result: dict) -> dict:
    block = {
        "invocation_id": result["invocation_id"],
        "workflow": result.get("workflow"),
        "status": result["status"],
        "provider": result.get("provider"),
        "model": result.get("model"),
        "attempts": len(result.get("attempts") or ()),
        "trace_id": result.get("trace_id"),
        "config_version": result.get("config_version"),
    }
    if result.get("review_id"):
        block["review_id"] = result["review_id"]
    return block


def models(workflows: list[str], created: int) -> dict:
    """`GET /v1/models`: one model per workflow the caller may invoke."""
    return {
        "object": "list",
        "data": [
            {"id": w, "object": "model", "created": created, "owned_by": "switchboard"} for w in workflows
        ],
    }

"""The OpenAI chat-completions wire format, and its translation to and from Switchboard's.

A request is validated as a whole (unknown fields are refused, naming the field, rather than
silently ignored), then becomes the `InvokeRequest` the SDK would send: `model` names the
workflow, the messages and sampling parameters carry over, `metadata` (and `user`) become the
invocation's metadata, which routing and review rules can match.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts import InvokeRequest, InvokeResult, Message, MetadataInput

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
    """The Switchboard invocation of an OpenAI request (validated: raises pydantic's error)."""
    metadata: dict = dict(body.metadata or {})
    if body.user is not None:
        metadata["user"] = body.user
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    return InvokeRequest(
        invocation_id=invocation_id,
        workflow=body.model,
        session_id=session_id,
        agent=agent,
        messages=[
            Message(
                role=_ROLES.get(m.role, m.role),
                content=m.content if isinstance(m.content, str) else "".join(p.text for p in m.content),
                name=m.name,
            )
            for m in body.messages
        ],
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=stop,
        metadata=metadata,
    )


def completion(result: InvokeResult) -> dict:
    """A `chat.completion` object; `model` is the model that answered, and `switchboard` says
    what Switchboard did (status, provider, attempts, trace and policy version)."""
    usage = result.usage
    return {
        "id": f"chatcmpl-{result.invocation_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.output or ""},
                "finish_reason": result.finish_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
        "switchboard": switchboard_block(result),
    }


def switchboard_block(result: InvokeResult) -> dict:
    block = {
        "invocation_id": result.invocation_id,
        "workflow": result.workflow,
        "status": result.status.value,
        "provider": result.provider,
        "model": result.model,
        "attempts": len(result.attempts),
        "trace_id": result.trace_id,
        "config_version": result.config_version,
    }
    if result.review_id:
        block["review_id"] = result.review_id
    return block


def models(workflows: list[str], created: int) -> dict:
    """`GET /v1/models`: one model per workflow the caller may invoke."""
    return {
        "object": "list",
        "data": [
            {"id": w, "object": "model", "created": created, "owned_by": "switchboard"} for w in workflows
        ],
    }

"""Anthropic Messages API: system prompts move to `system`, usage comes back as input/output;
streamed as message_start, content_block_delta..., message_delta (usage), message_stop."""

from __future__ import annotations

import orjson

from shared.contracts import AttemptOutcome, Message
from shared.providers.base import CallParams, Completion, ProviderAdapter, ProviderCallError, ProviderStream

API_VERSION = "2023-06-01"
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class AnthropicAdapter(ProviderAdapter):
    path = "/messages"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def body(self, model: str, messages: list[Message], params: CallParams) -> dict:
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        turns = [
            {"role": "assistant" if m.role == "assistant" else "user", "content": m.content}
            for m in messages
            if m.role != "system"
        ]
        body: dict = {"model": model, "messages": turns, "max_tokens": params.max_tokens}
        if system:
            body["system"] = system
        if params.temperature is not None:
            body["temperature"] = min(params.temperature, 1.0)
        if params.top_p is not None:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop_sequences"] = params.stop
        return body

    def parse(self, data: dict) -> Completion:
        text = "".join(part["text"] for part in data["content"] if part.get("type") == "text")
        usage = data.get("usage") or {}
        reason = data.get("stop_reason")
        return Completion(
            output=text,
            prompt_tokens=int(usage.get("input_tokens", 0)),
            completion_tokens=int(usage.get("output_tokens", 0)),
            finish_reason=STOP_REASONS.get(reason, reason),
            model=data.get("model"),
        )

    def stream_body(self, model: str, messages: list[Message], params: CallParams) -> dict:
        return {**self.body(model, messages, params), "stream": True}

    def read_event(self, stream: ProviderStream, event: str | None, data: str) -> str | None:
        body = orjson.loads(data)
        kind = body.get("type", event)
        if kind == "content_block_delta":
            delta = body["delta"]
            return delta["text"] if delta.get("type") == "text_delta" else None
        if kind == "message_start":
            message = body["message"]
            stream.model = message.get("model")
            stream.prompt_tokens = int((message.get("usage") or {}).get("input_tokens", 0))
        elif kind == "message_delta":
            reason = (body.get("delta") or {}).get("stop_reason")
            stream.finish_reason = STOP_REASONS.get(reason, reason)
            output = (body.get("usage") or {}).get("output_tokens")
            if output is not None:
                stream.completion_tokens = int(output)
        elif kind == "message_stop":
            stream.ended = True
        elif kind == "error":
            error = body.get("error") or {}
            raise ProviderCallError(
                AttemptOutcome.SERVER_ERROR, f"error event: {error.get('type')}: {error.get('message')}"
            )
        return None

"""OpenAI chat completions (also vLLM, Ollama, LiteLLM and other compatible servers)."""

from __future__ import annotations

import orjson

from shared.contracts import AttemptOutcome, Message
from shared.providers.base import CallParams, Completion, ProviderAdapter, ProviderCallError, ProviderStream


class OpenAIAdapter(ProviderAdapter):
    path = "/chat/completions"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        return headers

    def body(self, model: str, messages: list[Message], params: CallParams) -> dict:
        body: dict = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": params.max_tokens,
        }
        if params.temperature is not None:
            body["temperature"] = params.temperature
        if params.top_p is not None:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = params.stop
        return body

    def parse(self, data: dict) -> Completion:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        content = choice["message"].get("content") or ""
        if not isinstance(content, str):
            raise TypeError("content is not text")
        return Completion(
            output=content,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=choice.get("finish_reason"),
            model=data.get("model"),
        )

    def stream_body(self, model: str, messages: list[Message], params: CallParams) -> dict:
        """Streamed, with usage in the last chunk (`stream_options.include_usage`)."""
        return {
            **self.body(model, messages, params),
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    def read_event(self, stream: ProviderStream, event: str | None, data: str) -> str | None:
        if data == "[DONE]":
            stream.ended = True
            return None
        chunk = orjson.loads(data)
        if chunk.get("error"):  # some compatible servers report a failure inside the stream
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise ProviderCallError(AttemptOutcome.SERVER_ERROR, f"error event: {message}")
        stream.model = chunk.get("model") or stream.model
        usage = chunk.get("usage")
        if usage:
            stream.prompt_tokens = int(usage.get("prompt_tokens", 0))
            stream.completion_tokens = int(usage.get("completion_tokens", 0))
        choices = chunk.get("choices")
        if not choices:
            return None
        choice = choices[0]
        if choice.get("finish_reason"):
            stream.finish_reason = choice["finish_reason"]
        content = (choice.get("delta") or {}).get("content")
        if content is not None and not isinstance(content, str):
            raise TypeError("content is not text")
        return content

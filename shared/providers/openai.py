"""OpenAI chat completions (also vLLM, Ollama, LiteLLM and other compatible servers)."""

from __future__ import annotations

from shared.contracts import Message
from shared.providers.base import CallParams, Completion, ProviderAdapter


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

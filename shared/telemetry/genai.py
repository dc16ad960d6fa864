"""Provider-call spans in the OpenTelemetry GenAI semantic conventions, so trace backends show
model, provider, tokens and finish reasons the way they show them for any LLM client."""

from __future__ import annotations

from shared.providers.base import CallParams, Completion

OPERATION = "chat"  # the conventions' name for a chat/messages completion call


def span_name(model: str) -> str:
    """`{gen_ai.operation.name} {gen_ai.request.model}`, as the conventions name the span."""
    return f"{OPERATION} {model}"


def request_attributes(provider_kind: str, model: str, params: CallParams) -> dict:
    """What was asked. `provider_kind` is the API spoken (openai, anthropic): the conventions'
    well-known provider names."""
    attributes = {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.provider.name": provider_kind,
        "gen_ai.request.model": model,
        "gen_ai.request.max_tokens": params.max_tokens,
    }
    if params.temperature is not None:
        attributes["gen_ai.request.temperature"] = params.temperature
    if params.top_p is not None:
        attributes["gen_ai.request.top_p"] = params.top_p
    if params.stop:
        attributes["gen_ai.request.stop_sequences"] = params.stop
    return attributes


def response_attributes(requested_model: str, completion: Completion) -> dict:
    """What came back: the answering model, token usage and why generation stopped."""
    attributes = {
        "gen_ai.response.model": completion.model or requested_model,
        "gen_ai.usage.input_tokens": completion.prompt_tokens,
        "gen_ai.usage.output_tokens": completion.completion_tokens,
    }
    if completion.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [completion.finish_reason]
    return attributes

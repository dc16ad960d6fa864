"""Trace context for the SDK's requests, when the agent uses OpenTelemetry.

With `opentelemetry-api` installed (the `otel` extra, or already in the agent's environment)
each invocation is a CLIENT span and its context travels in the NATS headers (W3C
`traceparent`), so the gateway's trace continues the agent's. Without it nothing is traced and
nothing is required.
"""

from __future__ import annotations

import contextlib

try:
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # tracing is optional for an agent
    trace = None

if trace is not None:
    _tracer = trace.get_tracer("switchboard.sdk")
    _propagator = TraceContextTextMapPropagator()


def span(name: str, invocation_id: str):
    """A CLIENT span around one invocation (a no-op without OpenTelemetry)."""
    if trace is None:
        return contextlib.nullcontext()
    return _tracer.start_as_current_span(
        name, kind=SpanKind.CLIENT, attributes={"switchboard.invocation_id": invocation_id}
    )


def headers() -> dict[str, str]:
    """The current span's context as NATS headers (empty without OpenTelemetry)."""
    carrier: dict[str, str] = {}
    if trace is not None:
        _propagator.inject(carrier)
    return carrier


def trace_id_hex() -> str | None:
    if trace is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.trace_id else None

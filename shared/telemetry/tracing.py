"""OpenTelemetry tracing, and W3C trace context carried in NATS headers.

Every process installs an SDK tracer provider so trace ids are real and travel through every
hop even when no collector is configured. Spans are recorded and exported over OTLP/HTTP only
when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (sampling then follows `OTEL_TRACES_SAMPLER`, default
parent-based always-on); without a collector they are created unsampled, which keeps the ids
and costs a fraction of a recorded span on every hop of every invocation.
"""

from __future__ import annotations

import os

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
_installed = False


def setup_tracing(service: str, env: str) -> None:
    """Install the process-wide tracer provider once."""
    global _installed
    if _installed:
        return
    exporting = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"switchboard-{service}", "deployment.environment": env}),
        sampler=None if exporting else ParentBased(ALWAYS_OFF),
    )
    if exporting:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _installed = True


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject(headers: dict[str, str] | None = None) -> dict[str, str]:
    """The current span's context as NATS headers (`traceparent`, `tracestate`)."""
    carrier = headers if headers is not None else {}
    _propagator.inject(carrier)
    return carrier


def extract(headers: dict[str, str] | None) -> otel_context.Context:
    return _propagator.extract(headers or {})


def trace_id_hex(span: trace.Span | None = None) -> str | None:
    ctx = (span or trace.get_current_span()).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.trace_id else None

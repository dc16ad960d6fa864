"""OpenTelemetry tracing, and W3C trace context carried in NATS headers.

Every process installs an SDK tracer provider so trace ids are real and travel through every
hop even when no collector is configured. Spans are recorded and exported over OTLP/HTTP only
when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (sampling then follows `OTEL_TRACES_SAMPLER`, default
parent-based always-on); without a collector they are created unsampled, which keeps the ids
and costs a fraction of a recorded span on every hop of every invocation.

What a service gets without writing tracing code: each handler behind `Bus.serve` runs in a
SERVER span continuing the caller's trace; `Bus.request` and `Bus.publish` carry the current
context on; every event emitted through the bus is also an event on the current span; the
recorder closes the trace with a span per recorded event. For a step worth its own span, use
`tracer("switchboard.<service>").start_as_current_span(...)`.
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
from pydantic import BaseModel

_propagator = TraceContextTextMapPropagator()
_installed = False
_exporting = False


def setup_tracing(service: str, env: str) -> None:
    """Install the process-wide tracer provider once."""
    global _installed, _exporting
    if _installed:
        return
    exporting = _exporting = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    provider = TracerProvider(
        resource=resource(service, env), sampler=None if exporting else ParentBased(ALWAYS_OFF)
    )
    if exporting:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _installed = True


def resource(service: str, env: str) -> Resource:
    """This process's resource; a service name the operator set (`OTEL_SERVICE_NAME` or
    `OTEL_RESOURCE_ATTRIBUTES`) wins over ours."""
    attributes = {"deployment.environment.name": env}
    if Resource.create({}).attributes.get("service.name", "").startswith("unknown_service"):
        attributes["service.name"] = f"switchboard-{service}"
    return Resource.create(attributes)


def exporting() -> bool:
    """Whether spans are recorded and exported (a collector is configured). Without one, a hop
    that only passes the caller's context on may skip its own unrecorded span."""
    return _exporting


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


def sampled(ctx: otel_context.Context) -> bool:
    """Whether the span in `ctx` is being recorded (and so worth a child span)."""
    return trace.get_current_span(ctx).get_span_context().trace_flags.sampled


_ENVELOPE = {"kind", "event_id", "ts", "env", "service", "trace_id"}


def add_span_event(event: BaseModel, span: trace.Span | None = None) -> None:
    """Put an emitted event on the current span as `switchboard.<kind>`, with its scalar fields
    as attributes (lists and mappings stay in the audit log)."""
    span = span or trace.get_current_span()
    if not span.is_recording():
        return
    attributes = {
        f"switchboard.{name}": value.value if hasattr(value, "value") else value
        for name, value in event
        if name not in _ENVELOPE and isinstance(value, str | int | float | bool)
    }
    span.add_event(f"switchboard.{event.kind.value}", attributes)

"""Every Prometheus metric of Switchboard, declared once so names and labels cannot drift.

Each service exposes the registry on its own `/metrics`; a metric that a service never
touches simply has no samples there.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

INVOCATIONS = Counter(
    "switchboard_invocations_total",
    "Invocations answered by the gateway.",
    ["workflow", "status", "provider", "model"],
)
INVOCATION_LATENCY = Histogram(
    "switchboard_invocation_latency_seconds",
    "End-to-end invocation latency inside the gateway.",
    ["workflow", "status"],
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter(
    "switchboard_tokens_total",
    "Tokens used, by kind (prompt or completion).",
    ["workflow", "provider", "model", "kind"],
)
STREAMS = Counter(
    "switchboard_streams_total",
    "Streamed answers by how they ended: complete, cap (cut at the completion cap) or interrupted "
    "(the provider's stream broke after its first chunk).",
    ["workflow", "end"],
)
STREAM_FIRST_CHUNK = Histogram(
    "switchboard_stream_first_chunk_seconds",
    "Time from the request reaching the gateway to the first chunk sent to the agent.",
    ["workflow"],
    buckets=LATENCY_BUCKETS,
)
PROVIDER_ATTEMPTS = Counter(
    "switchboard_provider_attempts_total",
    "Calls to providers, one per tier tried, by outcome.",
    ["provider", "model", "outcome"],
)
PROVIDER_LATENCY = Histogram(
    "switchboard_provider_latency_seconds",
    "Latency of provider calls.",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS,
)
FALLBACKS = Counter(
    "switchboard_fallback_activations_total",
    "Fallback activations: a tier (provider/model) failed or was skipped and the next was tried. "
    "reason is the failed call's outcome, or why the tier was skipped.",
    ["workflow", "from", "to", "reason"],
)
SPEND = Counter(
    "switchboard_spend_usd_total",
    "What answered invocations cost, in USD at the answering model's prices in the policy.",
    ["workflow", "provider", "model"],
)
BUDGET_BREACHES = Counter(
    "switchboard_budget_breaches_total",
    "Invocations refused before the call by a token or spend limit.",
    ["workflow", "scope"],
)
BUDGET_STORE_ERRORS = Counter(
    "switchboard_budget_store_errors_total",
    "Budget operations (reserve, settle, show) that could not reach Redis.",
    ["operation"],
)
IDEMPOTENCY_UNAVAILABLE = Counter(
    "switchboard_idempotency_unavailable_total",
    "Invocations the gateway ran without de-duplication because Redis did not take the claim of "
    "their id (operation=claim), or whose reply it could not store for retries (operation=store).",
    ["operation"],
)
RATE_LIMIT_EVENTS = Counter(
    "switchboard_rate_limit_events_total",
    "Rate-limit events: provider 429s and local quota skips.",
    ["provider", "model", "source"],
)
QUOTA_REQUEST_HEADROOM = Gauge(
    "switchboard_quota_request_headroom",
    "Requests left in the current minute of a provider's (model=\"*\") or a model's quota.",
    ["provider", "model"],
)
QUOTA_TOKEN_HEADROOM = Gauge(
    "switchboard_quota_token_headroom",
    "Tokens left in the current minute of a provider's (model=\"*\") or a model's quota.",
    ["provider", "model"],
)
QUOTA_REQUEST_LIMIT = Gauge(
    "switchboard_quota_request_limit",
    'Requests per minute the policy allows a provider (model="*") or a model.',
    ["provider", "model"],
)
QUOTA_TOKEN_LIMIT = Gauge(
    "switchboard_quota_token_limit",
    'Tokens per minute the policy allows a provider (model="*") or a model.',
    ["provider", "model"],
)
CIRCUIT_OPEN = Gauge(
    "switchboard_circuit_open",
    "1 while a provider's circuit breaker is open (calls to it are skipped), else 0.",
    ["provider"],
)
SPEND_CEILING = Gauge(
    "switchboard_budget_spend_ceiling_usd",
    "A workflow's daily spend ceiling (budget.usd_per_day) in the active policy.",
    ["workflow"],
)
AUDIT_PENDING = Gauge(
    "switchboard_audit_pending_events",
    "Events in JetStream that the recorder has not yet written to the audit log.",
)
AUDIT_OLDEST_UNRECORDED = Gauge(
    "switchboard_audit_oldest_unrecorded_seconds",
    "Age of the oldest event not yet written to the audit log (0 when none is waiting).",
)
HITL_QUEUE_DEPTH = Gauge("switchboard_hitl_queue_depth", "Pending reviews.", ["queue"])
HITL_OLDEST_PENDING = Gauge(
    "switchboard_hitl_oldest_pending_seconds", "Age of the oldest pending review.", ["queue"]
)
HITL_DECISIONS = Counter(
    "switchboard_hitl_decisions_total",
    "Review decisions (approved, rejected, escalated, timeout) by who took them: human or system.",
    ["queue", "decision", "by"],
)
HITL_SLA_BREACHES = Counter(
    "switchboard_hitl_sla_breaches_total", "Pending reviews that went past their queue's SLA.", ["queue"]
)
CONFIG_VERSION = Gauge(
    "switchboard_config_version",
    "Active policy version (0 while running on local files before any version exists).",
    ["service"],
)
CONFIG_REJECTED = Counter(
    "switchboard_config_rejected_total", "Policy versions that failed to load.", ["service"]
)
BAD_REQUESTS = Counter(
    "switchboard_bad_requests_total", "Messages refused as invalid, by code.", ["service", "code"]
)
HANDLER_ERRORS = Counter(
    "switchboard_handler_errors_total", "Unexpected errors in message handlers.", ["service"]
)
EVENTS_PUBLISHED = Counter("switchboard_events_published_total", "Events published to JetStream.", ["kind"])
EVENT_PUBLISH_FAILURES = Counter(
    "switchboard_event_publish_failures_total",
    "Events lost: the local spool was full, or still held them when the process stopped.",
    ["kind"],
)
EVENT_SPOOL_DEPTH = Gauge(
    "switchboard_event_spool_depth", "Events waiting in this process's local spool for JetStream."
)
EVENTS_RECORDED = Counter("switchboard_events_recorded_total", "Events written to the audit log.", ["kind"])
EVENTS_DEAD_LETTERED = Counter(
    "switchboard_events_dead_lettered_total",
    "Events the audit log could not hold, kept in dead_letters (unreadable | rejected).",
    ["reason"],
)
INGRESS_REQUESTS = Counter(
    "switchboard_ingress_requests_total",
    "Requests to the ingress's OpenAI-compatible API, by route and HTTP status code.",
    ["route", "code"],
)
INGRESS_LATENCY = Histogram(
    "switchboard_ingress_request_latency_seconds",
    "Time the ingress took to answer an API request, the invocation included.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)

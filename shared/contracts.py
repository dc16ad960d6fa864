"""Wire messages: every JSON body that crosses NATS, as a pydantic model. No logic here.

The agent's half (the invocation request and result, the degradation plan, the passthrough
record, the review lookup, the event envelope) is defined in the SDK's `switchboard_sdk.contracts`
and re-exported here, so that the services and the SDK validate the same models; everything
between the services is defined below.

Requests from outside (agents, operators) forbid unknown fields so that a typo is an error,
not a silently ignored option. Replies and events allow extra fields so that a newer service
can extend them without breaking an older reader.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from switchboard_sdk.contracts import (  # noqa: F401  (re-exported: the one place to import wire models from)
    Attempt,
    AttemptOutcome,
    Degradation,
    DegradationPlan,
    DegradationRequest,
    DirectTier,
    ErrorInfo,
    Event,
    EventKind,
    Identifier,
    InvokeRequest,
    InvokeResult,
    Label,
    Message,
    MetadataInput,
    MetadataKey,
    MetadataValue,
    Open,
    PassthroughEvent,
    ReviewLookup,
    ReviewState,
    ReviewStatus,
    Status,
    StreamChunk,
    StreamEnd,
    StreamInfo,
    Strict,
    Usage,
)
from switchboard_sdk.nats_auth import AGENT_PATTERN

# A drill's own invocations carry this metadata key naming a provider: the gateway's plan skips
# that provider for them alone (source "drill"), so live traffic is untouched and nothing is left
# behind when a drill dies.
DRILL_AVOID_METADATA = "switchboard.drill.avoid_provider"


# --- provider outcomes (gateway -> router) -------------------------------------------


class TierOutcome(Strict):
    """What provider calls did, reported to the router for cooldowns, circuits and quotas.
    Failures are reported one by one; successes are summed per provider/model (`calls`)."""

    invocation_id: str | None = None
    calls: int = Field(default=1, ge=1)
    workflow: str | None = None
    provider: str
    model: str
    outcome: AttemptOutcome
    status_code: int | None = None
    retry_after_s: float | None = None
    tokens: int = 0


class ProviderStatusRequest(Strict):
    provider: str | None = None


class ModelState(Open):
    model: str
    cooldown_ms: int = 0
    requests_this_minute: int = 0
    tokens_this_minute: int = 0
    rpm: int | None = None
    tpm: int | None = None
    request_headroom: int | None = None
    token_headroom: int | None = None


class ProviderState(Open):
    provider: str
    kind: str
    blocked: str | None = None
    circuit_open_ms: int = 0
    consecutive_failures: int = 0
    requests_this_minute: int = 0
    tokens_this_minute: int = 0
    rpm: int | None = None
    tpm: int | None = None
    request_headroom: int | None = None
    token_headroom: int | None = None
    models: list[ModelState] = Field(default_factory=list)


class ProviderStatusReply(Open):
    config_version: str = ""
    providers: list[ProviderState] = Field(default_factory=list)
    error: ErrorInfo | None = None


class BlockRequest(Strict):
    provider: str
    blocked: bool
    reason: str = Field(default="blocked by operator", max_length=200)
    by: str | None = None


class BlockReply(Open):
    provider: str
    blocked: bool
    error: ErrorInfo | None = None


# --- operator -> gateway: probes --------------------------------------------------------

PROBE_MAX_COUNT = 10


class ProbeRequest(Strict):
    """A few real calls to one provider, whether or not it is blocked (sbctl provider probe)."""

    provider: str
    model: str | None = None  # default: the provider's first model in the policy
    count: int = Field(default=3, ge=1, le=PROBE_MAX_COUNT)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    by: str
    why: str = Field(default="", max_length=200)


class ProbeCall(Open):
    invocation_id: str  # the probe's own id, as recorded in the audit log
    outcome: AttemptOutcome
    latency_ms: float
    status_code: int | None = None
    reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ProbeReply(Open):
    provider: str = ""
    model: str = ""
    config_version: str | None = None
    calls: list[ProbeCall] = Field(default_factory=list)
    error: ErrorInfo | None = None


# --- gateway <-> budget ---------------------------------------------------------------


class ReserveRequest(Strict):
    invocation_id: str
    workflow: str
    session_id: str | None = None
    agent: str | None = None  # the authenticated agent: its own budget is held in the same step
    estimated_prompt_tokens: int = Field(ge=0, le=1_000_000_000)
    max_tokens: int | None = Field(default=None, gt=0, le=1_000_000_000)
    model: str | None = None
    # One run of the invocation by a gateway (a try): a retry's try takes over the hold of an
    # earlier one, whose late settle then changes nothing. None: any settle of the id applies.
    hold_token: str | None = Field(default=None, max_length=64)


class BudgetScope(StrEnum):
    INVOCATION = "invocation"  # the workflow's per-invocation token ceiling
    SESSION = "session"  # the session's rolling token budget
    SPEND = "spend"  # the workflow's daily spend ceiling in USD
    AGENT_TOKENS = "agent_tokens"  # the agent's rolling token budget, across workflows
    AGENT_SPEND = "agent_spend"  # the agent's daily spend ceiling in USD, across workflows


class Breach(Open):
    scope: BudgetScope
    estimated_tokens: int
    ceiling: float
    remaining: float
    message: str


class Reservation(Open):
    allowed: bool
    max_tokens: int | None = None
    reserved_tokens: int = 0
    breach: Breach | None = None
    error: ErrorInfo | None = None
    config_version: str | None = None


class SettleRequest(Strict):
    invocation_id: str
    workflow: str
    session_id: str | None = None
    agent: str | None = None
    reserved_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None
    hold_token: str | None = Field(default=None, max_length=64)  # the try's, as reserved


class SettleReply(Open):
    """A budget replica took the settle (`settled`: ledgers changed; 0 for a repeat)."""

    settled: int = 0
    error: ErrorInfo | None = None


class ExtendRequest(Strict):
    """Keep a try's reservation held for another reservation_ttl_s (a stream still relaying)."""

    invocation_id: str
    workflow: str
    session_id: str | None = None
    agent: str | None = None
    hold_token: str = Field(max_length=64)  # only the try that holds it extends it


class ExtendReply(Open):
    """`extended`: the ledgers whose hold this try still had, and now has for another TTL."""

    extended: int = 0
    error: ErrorInfo | None = None


class BudgetShowRequest(Strict):
    workflow: str
    session_id: str | None = None


class LedgerUsage(Open):
    """A limit held in Redis as it stands now: `used` is settled, `reserved` is in flight."""

    unit: Literal["tokens", "usd"]
    limit: float
    used: float
    reserved: float
    remaining: float
    in_flight: int
    window_s: int


class BudgetShowReply(Open):
    workflow: str
    session_id: str | None = None
    config_version: str | None = None
    budget: dict | None = None  # the workflow's `budget` section of the live policy
    session: LedgerUsage | None = None
    spend_today: LedgerUsage | None = None
    error: ErrorInfo | None = None


# --- events (JetStream sb.<env>.events.<kind>; the envelope `Event` is the SDK's) ----------


class InvocationEvent(Event):
    kind: Literal[EventKind.INVOCATION] = EventKind.INVOCATION
    invocation_id: str
    workflow: str
    session_id: str | None = None
    agent: str | None = None
    status: Status
    provider: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_tokens: int | None = None  # what the caller asked for (None: the workflow's ceiling)
    estimated_prompt_tokens: int = 0
    latency_ms: float = 0.0
    attempts: list[Attempt] = Field(default_factory=list)
    error: ErrorInfo | None = None
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    message_count: int = 0
    output_chars: int = 0
    cost_usd: float | None = None  # at the answering model's prices; None when nothing answered
    stream: StreamInfo | None = None  # a streamed answer: chunks, time to first, how it ended


class AttemptEvent(Event):
    kind: Literal[EventKind.ATTEMPT] = EventKind.ATTEMPT
    invocation_id: str
    workflow: str
    tier: int
    provider: str
    model: str
    outcome: AttemptOutcome
    latency_ms: float = 0.0
    status_code: int | None = None
    reason: str | None = None
    attempt_id: str | None = None  # the `attempt_started` event of the same call


class AttemptStartedEvent(Event):
    """A provider call about to be made, acknowledged by JetStream before the call goes out: a
    gateway that dies during the call leaves this without the `attempt` event of the same
    `attempt_id` (an orphaned call: made, perhaps billed by the provider, never answered)."""

    kind: Literal[EventKind.ATTEMPT_STARTED] = EventKind.ATTEMPT_STARTED
    invocation_id: str
    workflow: str
    attempt_id: str
    tier: int
    provider: str
    model: str


class FallbackEvent(Event):
    kind: Literal[EventKind.FALLBACK] = EventKind.FALLBACK
    invocation_id: str
    workflow: str
    from_tier: int
    from_provider: str
    from_model: str
    to_tier: int
    to_provider: str
    to_model: str
    reason: str
    outcome: AttemptOutcome  # what the tier given up did (skipped, rate_limited, ...)
    source: str | None = None  # why it was skipped: blocked | cooldown | circuit_open | local_quota


class RateLimitSource(StrEnum):
    PROVIDER_429 = "provider_429"  # the provider answered 429
    LOCAL_QUOTA = "local_quota"  # our own per-minute quota for the provider/model ran out


class RateLimitEvent(Event):
    kind: Literal[EventKind.RATE_LIMIT] = EventKind.RATE_LIMIT
    invocation_id: str | None = None
    workflow: str | None = None
    provider: str
    model: str
    source: RateLimitSource
    detail: str | None = None
    retry_after_s: float | None = None
    cooldown: bool | None = None  # whether the provider's cooldown applies


class CircuitEvent(Event):
    kind: Literal[EventKind.CIRCUIT] = EventKind.CIRCUIT
    invocation_id: str | None = None  # the call whose failure opened it
    provider: str
    state: Literal["open"]
    failures: int
    open_s: float


class BudgetBreachEvent(Event):
    kind: Literal[EventKind.BUDGET_BREACH] = EventKind.BUDGET_BREACH
    invocation_id: str
    workflow: str
    session_id: str | None = None
    agent: str | None = None  # the agent of the refused call, when it came from one
    scope: BudgetScope
    estimated_tokens: int
    ceiling: float
    remaining: float
    message: str


class BudgetUnavailableEvent(Event):
    kind: Literal[EventKind.BUDGET_UNAVAILABLE] = EventKind.BUDGET_UNAVAILABLE
    invocation_id: str
    workflow: str
    session_id: str | None = None
    mode: Literal["fail_closed", "allow"]  # the workflow's `budget.on_unavailable`
    reason: str


class ConfigEvent(Event):
    kind: Literal[EventKind.CONFIG] = EventKind.CONFIG
    action: Literal["applied"]
    version: int
    applied_at: float
    applied_by: str | None = None
    by_source: str | None = None  # how the operator is known: configured | os | verified
    change: str | None = None  # apply | rollback | promote
    reason: str | None = None
    forced: bool = False  # a protected environment's guard was overridden
    checksum: str
    source: str | None = None
    policy: dict  # as written, variables unexpanded


class ProviderBlockEvent(Event):
    kind: Literal[EventKind.PROVIDER_BLOCK] = EventKind.PROVIDER_BLOCK
    provider: str
    blocked: bool
    reason: str
    by: str | None = None


class LeverEvent(Event):
    """Who pulled which lever, on what, and why; `by_source` says how the operator is known."""

    kind: Literal[EventKind.LEVER] = EventKind.LEVER
    config_version: str = ""  # levers act beside the policy, not under a version of it
    lever: str  # e.g. workflow.pause, agent.resume
    target: str
    reason: str = ""
    by: str
    by_source: str  # configured | os | verified
    changed: bool | None = None  # False when the switch was already in that position


class ProbeEvent(Event):
    """One probe call to a provider, made by an operator to see whether it has recovered. Its
    `invocation_id` is the probe's own (`probe-...`), never an agent's invocation: no workflow,
    no budget ledger, no routing state is touched."""

    kind: Literal[EventKind.PROBE] = EventKind.PROBE
    invocation_id: str
    provider: str
    model: str
    outcome: AttemptOutcome
    latency_ms: float = 0.0
    status_code: int | None = None
    reason: str | None = None  # the failure, as the adapter classified it
    prompt_tokens: int = 0
    completion_tokens: int = 0
    by: str  # the operator who asked for it
    why: str = ""


AnyEvent = Annotated[
    InvocationEvent
    | AttemptEvent
    | AttemptStartedEvent
    | FallbackEvent
    | RateLimitEvent
    | CircuitEvent
    | BudgetBreachEvent
    | BudgetUnavailableEvent
    | ConfigEvent
    | ProviderBlockEvent
    | PassthroughEvent
    | LeverEvent
    | ProbeEvent,
    Field(discriminator="kind"),
]


# --- gateway <-> hitl ------------------------------------------------------------------


class ReviewStage(StrEnum):
    PRE = "pre"  # held before any model is called
    POST = "post"  # the model's output held before it reaches the agent


class DeciderKind(StrEnum):
    HUMAN = "human"  # a reviewer, identified by their token
    SYSTEM = "system"  # a timeout: never counted as consent by a person


class OpenReview(Strict):
    """gateway -> hitl: hold this invocation; stored durably before the agent is told."""

    invocation_id: Identifier
    stage: ReviewStage
    rule: str
    queue: str
    matched: dict[str, MetadataValue | None] = Field(default_factory=dict)
    config_version: str | None = None
    request: InvokeRequest
    held: InvokeResult | None = None  # post gate: the result the agent does not get yet
    trace_id: str | None = None


class ReviewOpened(Open):
    review_id: str = ""
    queue: str = ""
    deadline: float = 0.0  # unix seconds
    error: ErrorInfo | None = None


class ResumeRequest(Strict):
    """hitl -> gateway: a review is decided; act on it (exactly once per review)."""

    review_id: str
    stage: ReviewStage
    decision: Literal[ReviewState.APPROVED, ReviewState.REJECTED]
    decided_by: str
    decided_kind: DeciderKind
    reason: str | None = None
    request: InvokeRequest  # as the agent sent it
    edited_messages: list[Message] | None = None  # pre gate: a reviewer's edit, sent instead
    held: InvokeResult | None = None  # post gate: with a reviewer's edit of the output applied


class ResumeReply(Open):
    result: InvokeResult | None = None
    error: ErrorInfo | None = None


# --- operators <-> hitl (sbctl hitl) ------------------------------------------------------

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL: refused as invalid, not failed on
Text200 = Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)]


class ReviewerAdd(Strict):
    name: Identifier
    queues: list[Identifier] = Field(min_length=1, max_length=64)
    by: Text200


class ReviewerRevoke(Strict):
    name: Identifier
    by: Text200


class ReviewerList(Strict):
    pass


class Reviewer(Open):
    name: str
    queues: list[str]
    created_at: float
    created_by: str
    revoked_at: float | None = None
    token: str | None = None  # only in the reply that issued it


class ReviewersReply(Open):
    reviewers: list[Reviewer] = Field(default_factory=list)
    error: ErrorInfo | None = None


class QueuesRequest(Strict):
    pass


class QueueState(Open):
    queue: str
    owner: str
    depth: int
    oldest_age_s: float | None = None
    sla_s: int
    late: int = 0  # pending reviews past their SLA
    sla_state: Literal["ok", "late", "empty"]
    on_timeout: str
    timeout_s: int


class QueuesReply(Open):
    queues: list[QueueState] = Field(default_factory=list)
    error: ErrorInfo | None = None


class PendingRequest(Strict):
    queue: Identifier
    limit: int = Field(default=100, gt=0, le=1000)


class ReviewSummary(Open):
    review_id: str
    invocation_id: str
    queue: str
    stage: ReviewStage
    workflow: str
    agent: str | None = None
    rule: str
    matched: dict = Field(default_factory=dict)
    requested_at: float
    age_s: float
    sla_deadline: float
    deadline: float
    sla_state: Literal["ok", "late"]
    claimed_by: str | None = None
    approvals: list[str] = Field(default_factory=list)


class PendingReply(Open):
    reviews: list[ReviewSummary] = Field(default_factory=list)
    error: ErrorInfo | None = None


class QueueOp(Strict):
    """`extend` moves every pending deadline of a queue by `by_s`; `reassign` moves its pending
    reviews to queue `to` (whose timeout applies from now). Recorded with who and why."""

    op: Literal["extend", "reassign"]
    queue: Identifier
    by_s: int | None = Field(default=None, gt=0, le=30 * 86400)
    to: Identifier | None = None
    actor: Text200
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=NO_NUL)]


class QueueOpReply(Open):
    affected: int = 0
    error: ErrorInfo | None = None


class ExportRequest(Strict):
    since: float  # unix seconds, inclusive
    until: float  # unix seconds, exclusive


class ExportReply(Open):
    csv: str = ""
    rows: int = 0
    error: ErrorInfo | None = None


# --- recorder -------------------------------------------------------------------------


class TraceRequest(Strict):
    invocation_id: str


class EventCountRequest(Strict):
    kind: EventKind
    invocation_ids: list[str] = Field(max_length=10_000)


class EventCountReply(Open):
    kind: str
    count: int = 0
    invocations: int = 0  # how many of the ids have at least one such event
    error: ErrorInfo | None = None


class DeadLettersRequest(Strict):
    limit: int = Field(default=20, ge=1, le=1000)


class DeadLettersReply(Open):
    """Events the audit log could not hold: how many, and the newest (raw event as text)."""

    count: int = 0
    dead_letters: list[dict] = Field(default_factory=list)
    error: ErrorInfo | None = None


class AuditLag(Open):
    """How far the audit log is behind the event stream when the recorder answered: events
    published but not yet written, and the age of the oldest of them."""

    pending_events: int = 0
    oldest_s: float = 0.0


class TraceReply(Open):
    invocation_id: str
    found: bool
    invocation: InvocationEvent | None = None
    events: list[AnyEvent] = Field(default_factory=list)
    audit_lag: AuditLag | None = None  # when not found: the trail may still be on its way
    error: ErrorInfo | None = None


MAX_WINDOW_S = 400 * 86400  # longer than any retention period


class StatsRequest(Strict):
    since_s: float = Field(gt=0, le=MAX_WINDOW_S)
    until_s: float = Field(default=0, ge=0)  # the window ends this many seconds ago (0: now)
    workflow: str | None = None
    statuses: list[Status] | None = None  # only invocations that ended so (None: every one)
    by_agent: bool = False  # also per agent: sessions, spend, requested max_tokens


class AgentSpend(Open):
    agent: str | None = None
    invocations: int = 0
    spend_usd: float = 0.0


class WorkflowStats(Open):
    workflow: str | None = None
    invocations: int = 0
    by_status: dict[str, int] = Field(default_factory=dict)
    latency_ms: dict[str, float | None] = Field(default_factory=dict)  # p50, p95, p99
    prompt_tokens: int = 0
    completion_tokens: int = 0
    spend_usd: float = 0.0
    fallback_rate: float = 0.0  # invocations answered by a later tier, over all invocations
    budget_breaches: int = 0
    rate_limit_events: int = 0
    # fallback activations by why the earlier tier gave way: an operator block or a drill is
    # mitigation at work; a failure (server_error, timeout, ...) or a cooldown is the problem
    fallbacks_by_reason: dict[str, int] = Field(default_factory=dict)
    top_agents: list[AgentSpend] = Field(default_factory=list)


class AgentStats(Open):
    """One agent in one workflow over the window: enough to find a runaway (many sessions, much
    spend) and to set a ceiling from what normal callers ask for (requested max_tokens)."""

    workflow: str | None = None
    agent: str | None = None
    invocations: int = 0
    sessions: int = 0  # distinct session ids: one per call means every session budget is escaped
    spend_usd: float = 0.0
    tokens: int = 0
    max_tokens_p50: float | None = None  # what the caller asked for (None when it never said)
    max_tokens_max: int | None = None
    last_ts: float | None = None


class StatsReply(Open):
    since: float = 0.0  # epoch seconds
    until: float | None = None  # epoch seconds; None: now
    workflows: list[WorkflowStats] = Field(default_factory=list)
    agents: list[AgentStats] = Field(default_factory=list)  # when asked by_agent, most spend first
    audit_lag: AuditLag | None = None
    error: ErrorInfo | None = None


class InvocationsRequest(Strict):
    since_s: float = Field(gt=0, le=MAX_WINDOW_S)
    workflow: str | None = None
    status: str | None = None
    agent: str | None = None
    limit: int = Field(default=50, ge=1, le=10_000)


class InvocationRow(Open):
    invocation_id: str
    ts: float
    workflow: str | None = None
    agent: str | None = None
    session_id: str | None = None
    status: str | None = None
    provider: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    error_code: str | None = None
    trace_id: str | None = None


class InvocationsReply(Open):
    invocations: list[InvocationRow] = Field(default_factory=list)
    audit_lag: AuditLag | None = None
    error: ErrorInfo | None = None


# --- operators <-> ingress (sbctl ingress keys) --------------------------------------------

AgentName = Annotated[str, StringConstraints(pattern=AGENT_PATTERN.pattern)]  # a NATS subject token


class IngressKeyAdd(Strict):
    """Issue an API key for the HTTP ingress; its caller acts as `agent`."""

    agent: AgentName
    by: Label
    reason: Text200 = Field(min_length=1)


class IngressKeyRevoke(Strict):
    key_id: Identifier
    by: Label
    reason: Text200 = Field(min_length=1)


class IngressKeyList(Strict):
    include_revoked: bool = False


class IngressKey(Open):
    """An API key as the operator sees it: never the key, except once in the reply that issued it."""

    key_id: str
    agent: str
    prefix: str  # the key's first characters, to tell keys apart
    created_at: float
    created_by: str
    reason: str
    revoked_at: float | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    key: str | None = None


class IngressKeysReply(Open):
    keys: list[IngressKey] = Field(default_factory=list)
    error: ErrorInfo | None = None


# --- stop switches (KV sb_<env>_switches, key "pauses") ------------------------------------


class Pause(Open):
    """One stop switch that is on: why, who pulled it, when (epoch seconds)."""

    reason: str
    by: str
    at: float


class Pauses(Open):
    """Every paused workflow and agent of an environment, as one compare-and-set document."""

    workflows: dict[str, Pause] = Field(default_factory=dict)
    agents: dict[str, Pause] = Field(default_factory=dict)


# --- rollout acknowledgement (KV sb_<env>_rollout, key "<service>.<replica>") ---------------


class ReplicaReport(Open):
    """What one replica says about policy: the version it runs, the last one it rejected and
    why, refreshed every `heartbeat_s` (a report older than a few heartbeats is stale)."""

    service: str
    replica: str
    version: int  # the version it runs; 0 while it runs on local files
    config_version: str
    rejected_version: int | None = None
    error: str | None = None
    reported_at: float
    heartbeat_s: float

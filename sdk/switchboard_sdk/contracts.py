"""The wire messages an agent exchanges with Switchboard, as pydantic models. No logic here.

These are the client's half of the contracts: the invocation request and its result, the
degradation plan, the passthrough record and the review lookup. The services import them from
here (their own messages live beside them on the server), so both ends validate the same model.

Requests from outside (agents, operators) forbid unknown fields so that a typo is an error,
not a silently ignored option. Replies and events allow extra fields so that a newer service
can extend them without breaking an older reader.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
MetadataValue = str | int | float | bool
# What an agent sends that ends up in the audit log as a value: no control characters (PostgreSQL
# text and jsonb cannot hold NUL, and none is ever meant in a name or a label), bounded sizes,
# and integers that fit 64 bits (what JSON encoders and PostgreSQL hold).
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Label = Annotated[str, StringConstraints(max_length=128, pattern=_PRINTABLE)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_PRINTABLE)]
MetadataInput = (
    Annotated[str, StringConstraints(max_length=1024, pattern=_PRINTABLE)]
    | Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
    | float
    | bool
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Status(StrEnum):
    SUCCESS = "success"  # the first tier answered
    FALLBACK = "fallback"  # a later tier answered after an earlier one failed or was skipped
    ERROR = "error"  # no tier answered, or the request was refused as invalid
    BUDGET_EXCEEDED = "budget_exceeded"  # refused before the call: a token or spend limit
    REJECTED = "rejected"  # a reviewer (or a review timeout) said no
    PENDING_REVIEW = "pending_review"  # held for human review; the result follows on sb.<env>.result.<id>


class Message(Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=1_000_000)
    name: Label | None = None


# --- agent <-> gateway (sb.<env>.invoke.<workflow>) ----------------------------------


class InvokeRequest(Strict):
    invocation_id: Identifier
    workflow: Identifier
    session_id: Identifier | None = None
    agent: Label | None = None
    messages: list[Message] = Field(min_length=1, max_length=1000)
    max_tokens: int | None = Field(default=None, gt=0, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=8
    )
    metadata: dict[MetadataKey, MetadataInput] = Field(default_factory=dict, max_length=64)
    # True: stream the answer, as `StreamChunk`s to the requester's own reply inbox, in order, then
    # the final `InvokeResult` there; a stream broken after its first chunk ends in
    # `stream_interrupted`. None (not False) when not streamed, so the field stays off the wire
    # (and out of idempotency fingerprints) for every other request.
    stream: bool | None = None


class Usage(Open):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ErrorInfo(Open):
    code: str
    message: str
    retryable: bool = False
    details: list[dict] | None = None


class AttemptOutcome(StrEnum):
    OK = "ok"  # the tier answered
    RATE_LIMITED = "rate_limited"  # provider 429
    SERVER_ERROR = "server_error"  # provider 5xx
    TIMEOUT = "timeout"  # no answer within the tier's timeout
    CONNECTION_ERROR = "connection_error"  # could not reach the provider
    MALFORMED = "malformed"  # the provider's answer could not be read
    CLIENT_ERROR = "client_error"  # provider 4xx other than 429/408: not retried on another tier
    SKIPPED = "skipped"  # not tried: blocked, cooling down, circuit open or out of quota


class Attempt(Open):
    tier: int
    provider: str
    model: str
    outcome: AttemptOutcome
    latency_ms: float = 0.0
    status_code: int | None = None
    reason: str | None = None
    source: str | None = None  # why a tier was skipped: blocked | cooldown | circuit_open | local_quota
    attempt_id: str | None = None  # the provider call's id in the audit log (none when skipped)


class StreamEnd(StrEnum):
    COMPLETE = "complete"  # the provider finished the answer
    CAP = "cap"  # cut at the completion cap (the reservation's max_tokens): the rest was not sent
    INTERRUPTED = "interrupted"  # the provider's stream broke after its first chunk


class StreamInfo(Open):
    """How a streamed answer went: chunks sent, time to the first one, how it ended."""

    chunks: int = 0
    first_chunk_ms: float | None = None
    end: StreamEnd


class StreamChunk(Open):
    """One piece of a streamed answer, published to the requester's reply inbox; `seq` counts
    from 0 without gaps, so a receiver can tell a lost chunk from the end."""

    invocation_id: str
    seq: int
    delta: str


class InvokeResult(Open):
    invocation_id: str
    status: Status
    workflow: str | None = None
    provider: str | None = None
    model: str | None = None
    output: str | None = None
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_ms: float = 0.0
    attempts: list[Attempt] = Field(default_factory=list)
    error: ErrorInfo | None = None
    trace_id: str | None = None
    config_version: str | None = None
    review_id: str | None = None
    enforced: bool = True  # False: a passthrough call made by the SDK while the plane was unreachable
    stream: StreamInfo | None = None  # a streamed answer: the final message after its chunks


# --- agent <-> router: what an agent does when the control plane is unreachable -----------


class Degradation(StrEnum):
    FAIL_CLOSED = "fail_closed"  # the SDK raises control_plane_unavailable at once
    PASSTHROUGH = "passthrough"  # the SDK calls the provider itself, records locally, uploads later


class DegradationRequest(Strict):
    workflow: Identifier


class DirectTier(Open):
    """A tier as an agent calls it without the gateway: where, which model, whose key."""

    provider: str
    kind: str  # openai | anthropic
    base_url: str
    model: str
    api_key_env: str | None = None  # the agent's own environment variable holding its key
    timeout_ms: int


class DegradationPlan(Open):
    """A workflow's degradation mode, and for passthrough the tiers in policy order."""

    workflow: str
    mode: Degradation = Degradation.FAIL_CLOSED
    config_version: str | None = None
    max_tokens_per_invocation: int | None = None
    tiers: list[DirectTier] = Field(default_factory=list)
    error: ErrorInfo | None = None


# --- events (JetStream sb.<env>.events.<kind>) -----------------------------------------


class EventKind(StrEnum):
    INVOCATION = "invocation"  # one per answered invocation: the audit row
    ATTEMPT = "attempt"  # one per provider call, once it has ended
    ATTEMPT_STARTED = "attempt_started"  # one per provider call, durable before the call is made
    FALLBACK = "fallback"  # a tier gave way to the next one
    RATE_LIMIT = "rate_limit"  # a provider 429 or a local quota skipped a tier
    CIRCUIT = "circuit"  # a provider's circuit opened
    BUDGET_BREACH = "budget_breach"  # a budget ceiling refused an invocation
    BUDGET_UNAVAILABLE = "budget_unavailable"  # the budget could not be asked; the workflow's mode applied
    CONFIG = "config"  # a policy version was applied
    PROVIDER_BLOCK = "provider_block"  # an operator blocked or unblocked a provider
    PASSTHROUGH = "passthrough"  # an agent called a provider directly while the plane was unreachable
    LEVER = "lever"  # an operator pulled a lever through sbctl (a stop switch, ...)
    PROBE = "probe"  # an operator's probe call to a provider (sbctl provider probe): no invocation


class Event(Open):
    """Common envelope of every event. The bus stamps `event_id`, `ts`, `env`, `service` (and
    `trace_id` from the current span) when it emits; the emitter names the policy version it
    acted under. Readers require the stamped fields (see `codec.decode_event`)."""

    kind: EventKind
    event_id: str = ""
    ts: float = 0.0
    env: str = ""
    service: str = ""
    trace_id: str | None = None
    config_version: str


class PassthroughEvent(Event):
    """One call an agent made straight to a provider while the control plane was unreachable:
    the invocation record's fields, stamped by the SDK (`service: sdk`), marked `enforced: false`
    (no routing state, budget or review applied), uploaded once the plane is back.
    `config_version` is the policy version the SDK last saw."""

    kind: Literal[EventKind.PASSTHROUGH] = EventKind.PASSTHROUGH
    enforced: Literal[False] = False
    reason: str  # why the plane was unreachable
    invocation_id: str
    workflow: str
    session_id: str | None = None
    agent: str | None = None
    status: Status
    provider: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    attempts: list[Attempt] = Field(default_factory=list)
    error: ErrorInfo | None = None
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    message_count: int = 0
    output_chars: int = 0


# --- agent <-> hitl: where a held invocation stands ---------------------------------------


class ReviewState(StrEnum):
    PENDING = "pending"  # waiting for a reviewer (or its timeout)
    APPROVED = "approved"  # by reviewers, or by a timeout whose action is approve
    REJECTED = "rejected"  # by a reviewer, or by a timeout whose action is reject
    ESCALATED = "escalated"  # closed here; a new review continues in another queue


class ReviewLookup(Strict):
    invocation_id: Identifier


class ReviewStatus(Open):
    """Where a held invocation stands: its latest review, and its final result once there is one."""

    invocation_id: str
    found: bool = False
    review_id: str | None = None
    state: ReviewState | None = None
    queue: str | None = None
    result: InvokeResult | None = None
    error: ErrorInfo | None = None

"""What a reviewer may see and do, whichever door they come in by. The reviewers' HTTP API and the
console in the browser both call these and nothing else, so identity (the token), the queues a
reviewer may see, and the rules of deciding live in one place: a review outside the reviewer's
queues is Forbidden, an unknown one NotFound, a decision on a review that is no longer pending
Conflict (the store checks that under the review's row lock)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from services.hitl import export
from services.hitl.store import HistoryQuery, epoch
from shared.contracts import InvokeResult, Message, PendingRequest, QueueState, ReviewState, ReviewSummary
from shared.review_policy import QueueSpec
from switchboard_sdk import errors

if TYPE_CHECKING:
    from services.hitl.service import HitlService

STATUS = {  # the HTTP status of each error, for both the API and the console
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.InvalidRequest: 422,
    errors.Unavailable: 503,
}
QUEUE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
REVIEW_ID = r"^[0-9a-f]{32}$"
HISTORY_LIMIT = 500  # decided reviews listed at most; the CSV export of a filter holds them all


def status_of(exc: errors.SwitchboardError) -> int:
    return next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 500)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text may not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApproveBody(Body):
    edited_messages: list[Message] | None = Field(
        default=None, min_length=1, max_length=1000, description="pre gate: what goes to the model instead"
    )
    edited_output: Text | None = Field(
        default=None, max_length=1_000_000, description="post gate: what reaches the agent instead"
    )
    comment: Text | None = Field(default=None, max_length=2000)


class RejectBody(Body):
    reason: Text = Field(min_length=1, max_length=2000)


class EscalateBody(Body):
    to: Annotated[str, Field(pattern=QUEUE_NAME)] | None = Field(
        default=None, description="target queue (default: the queue's escalate_to)"
    )
    reason: Text = Field(min_length=1, max_length=2000)


class ReviewDetail(BaseModel):
    review_id: str
    invocation_id: str
    state: str
    stage: str
    queue: str
    owner: str
    workflow: str
    agent: str | None
    rule: str
    matched: dict
    config_version: str | None
    messages: list[Message]
    output: str | None = Field(description="post gate: the model's output held back")
    requested_at: float
    sla_deadline: float
    deadline: float
    on_timeout: str = Field(description="what the deadline does: approve, reject, or escalate -> queue")
    age_s: float
    sla_state: Literal["ok", "late"]
    claimed_by: str | None
    approvals: list[str]
    approvals_required: int
    decided_at: float | None
    decided_by: str | None
    decided_kind: str | None
    decision: str | None
    reason: str | None
    escalated_to: str | None
    edited_messages: list[Message] | None
    edited_output: str | None
    action: str | None = Field(description="what followed the decision, once a gateway acted on it")
    outcome: str | None = Field(description="the final status that followed")


def summary(row) -> ReviewSummary:
    """A pending review as listed: what held it, how old it is, whether it is late."""
    approvals = row["approvals"]
    approvals = orjson.loads(approvals) if isinstance(approvals, str) else approvals
    return ReviewSummary(
        review_id=row["id"],
        invocation_id=row["invocation_id"],
        queue=row["queue"],
        stage=row["stage"],
        workflow=row["workflow"],
        agent=row["agent"],
        rule=row["rule"],
        matched=orjson.loads(row["matched"]),
        requested_at=row["requested_at"].timestamp(),
        age_s=round(float(row["age_s"]), 3),
        sla_deadline=epoch(row["sla_deadline"]),
        deadline=epoch(row["deadline"]),
        sla_state="late" if row["late"] else "ok",
        claimed_by=row["claimed_by"],
        approvals=[a["reviewer"] for a in approvals],
    )


def detail(row) -> ReviewDetail:
    """One review in full: the summary, the prompt and held output, the decision and what followed."""
    request = orjson.loads(row["request"])
    held = InvokeResult.model_validate_json(row["held"]) if row["held"] else None
    spec = orjson.loads(row["queue_spec"]) if isinstance(row["queue_spec"], str) else row["queue_spec"]
    edited = orjson.loads(row["edited_messages"]) if row["edited_messages"] else None
    return ReviewDetail(
        **summary(row).model_dump(mode="json"),
        state=row["state"],
        owner=row["owner"],
        config_version=row["config_version"],
        messages=request["messages"],
        output=held.output if held else None,
        on_timeout=QueueSpec.model_validate(spec).timeout_action,
        approvals_required=spec.get("approvals_required", 1),
        decided_at=epoch(row["decided_at"]),
        decided_by=row["decided_by"],
        decided_kind=row["decided_kind"],
        decision=row["decision"],
        reason=row["reason"],
        escalated_to=row["escalated_to"],
        edited_messages=edited,
        edited_output=row["edited_output"],
        action=row["action"],
        outcome=row["outcome"],
    )


@dataclass(frozen=True)
class ReviewerIdentity:
    name: str
    queues: frozenset[str]


@dataclass(frozen=True)
class HistoryFilter:
    """Decided reviews of [since, until), narrowed by queue, reviewer and decision when given."""

    since: datetime
    until: datetime
    queue: str | None = None
    reviewer: str | None = None
    decision: str | None = None


@dataclass(frozen=True)
class History:
    """The first `limit` decided reviews of a filter, newest first, and how many it selects."""

    reviews: list[ReviewDetail]
    matching: int


class Reviewing:
    """The reviewer's view of the hitl service: every read and decision checks who is asking."""

    def __init__(self, svc: HitlService) -> None:
        self.svc = svc

    async def identify(self, token: str | None) -> ReviewerIdentity:
        if not token or "\x00" in token:
            raise errors.Unauthorized("a reviewer token is required")
        row = await self.svc.store.reviewer_by_token(token)
        if row is None:
            raise errors.Unauthorized("unknown or revoked token")
        return ReviewerIdentity(row["name"], frozenset(row["queues"]))

    def own_queue(self, who: ReviewerIdentity, queue: str) -> None:
        self.svc.queue_spec(queue)  # NotFound for a queue the policy does not declare
        if queue not in who.queues:
            raise errors.Forbidden(f"reviewer {who.name!r} does not review queue {queue!r}")

    def policy_queues(self) -> list[str]:
        """Every queue of the running policy: where a review may be escalated to."""
        return sorted(self.svc.config.active.policy.review_queues)

    async def queues(self, who: ReviewerIdentity) -> list[QueueState]:
        return [q for q in (await self.svc.queues()).queues if q.queue in who.queues]

    async def pending(self, who: ReviewerIdentity, queue: str, limit: int = 100) -> list[ReviewSummary]:
        self.own_queue(who, queue)
        return (await self.svc.pending(PendingRequest(queue=queue, limit=limit))).reviews

    async def _row(self, who: ReviewerIdentity, review_id: str):
        row = await self.svc.store.get(review_id)
        if row is None:
            raise errors.NotFound(f"no review {review_id}")
        if row["queue"] not in who.queues:
            raise errors.Forbidden(f"reviewer {who.name!r} does not review queue {row['queue']!r}")
        return row

    async def review(self, who: ReviewerIdentity, review_id: str) -> ReviewDetail:
        return detail(await self._row(who, review_id))

    async def _act(self, who: ReviewerIdentity, review_id: str, verb: str, **kw) -> ReviewDetail:
        row = await self.svc.store.act(review_id, who.name, who.queues, verb, **kw)
        if verb in ("approve", "reject") and row["state"] != ReviewState.PENDING:
            self.svc.record_decision(row["queue"], row["state"])
        return detail(await self.svc.store.get(row["id"]))

    async def claim(self, who: ReviewerIdentity, review_id: str) -> ReviewDetail:
        return await self._act(who, review_id, "claim")

    async def approve(self, who: ReviewerIdentity, review_id: str, body: ApproveBody) -> ReviewDetail:
        messages = [m.model_dump(mode="json", exclude_none=True) for m in body.edited_messages or []]
        return await self._act(
            who,
            review_id,
            "approve",
            reason=body.comment,
            edited_messages=messages or None,
            edited_output=body.edited_output,
        )

    async def reject(self, who: ReviewerIdentity, review_id: str, body: RejectBody) -> ReviewDetail:
        return await self._act(who, review_id, "reject", reason=body.reason)

    async def escalate(self, who: ReviewerIdentity, review_id: str, body: EscalateBody) -> ReviewDetail:
        row = await self._row(who, review_id)
        target = _escalation_target(row["queue"], orjson.loads(row["queue_spec"]), body.to)
        spec = self.svc.queue_spec(target)
        new = await self._act(who, review_id, "escalate", reason=body.reason, escalate=(target, spec))
        self.svc.record_decision(row["queue"], "escalated")
        return new

    async def history(self, who: ReviewerIdentity, f: HistoryFilter, limit: int = HISTORY_LIMIT) -> History:
        query = self._history_query(who, f)
        rows = await self.svc.store.history(query, limit)
        matching = len(rows) if len(rows) < limit else await self.svc.store.history_count(query)
        return History([detail(r) for r in rows], matching)

    async def history_csv(self, who: ReviewerIdentity, f: HistoryFilter) -> str:
        """The audit trail of every review `history` selects with the same filter, none left out."""
        return export.to_csv(await self.svc.store.history_audit_rows(self._history_query(who, f)))

    def _history_query(self, who: ReviewerIdentity, f: HistoryFilter) -> HistoryQuery:
        queues = self._visible(who, f.queue)
        return HistoryQuery(_utc(f.since), _utc(f.until), queues, f.reviewer, f.decision)

    async def audit_csv(self, who: ReviewerIdentity, since: datetime, until: datetime) -> str:
        """Every audit row of the reviewer's queues in [since, until), whatever review it is of."""
        rows = await self.svc.store.audit_rows(_utc(since), _utc(until), self._visible(who, None))
        return export.to_csv(rows)

    def _visible(self, who: ReviewerIdentity, queue: str | None) -> list[str]:
        if queue is None:
            return sorted(who.queues)
        if queue not in who.queues:
            raise errors.Forbidden(f"reviewer {who.name!r} does not review queue {queue!r}")
        return [queue]


def _escalation_target(queue: str, spec: dict, to: str | None) -> str:
    target = to or spec.get("escalate_to")
    if target is None:
        raise errors.InvalidRequest(f"queue {queue!r} has no escalate_to; name a queue in `to`")
    if target == queue:
        raise errors.InvalidRequest("a review cannot be escalated to its own queue")
    return target


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts

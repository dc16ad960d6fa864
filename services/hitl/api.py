"""The reviewers' HTTP API (OpenAPI at /openapi.json). Who is asking comes only from the bearer
token: none, unknown or revoked is 401; a review or queue outside the reviewer's queues is 403;
an unknown one 404; a decision on a review that is no longer pending (decided, timed out,
escalated away) or a second approval by the same reviewer is 409. Errors become responses here,
in one handler, with the same machine codes as on NATS.

No `from __future__ import annotations`: FastAPI reads the dependency annotations at runtime."""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Literal

import orjson
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from services.hitl import export
from services.hitl.store import epoch
from shared.contracts import (
    ErrorInfo,
    InvokeResult,
    Message,
    PendingRequest,
    QueueState,
    ReviewState,
    ReviewSummary,
)
from switchboard_sdk import errors

if TYPE_CHECKING:
    from services.hitl.service import HitlService

STATUS = {
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.InvalidRequest: 422,
    errors.Unavailable: 503,
}
ReviewId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="the review's id")]
QueuePath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


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
    to: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")] | None = Field(
        default=None, description="target queue (default: the queue's escalate_to)"
    )
    reason: Text = Field(min_length=1, max_length=2000)


class ErrorBody(BaseModel):
    error: ErrorInfo


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
    age_s: float
    sla_state: Literal["ok", "late"]
    claimed_by: str | None
    approvals: list[str]
    approvals_required: int
    decided_by: str | None
    decided_kind: str | None
    decision: str | None
    reason: str | None
    escalated_to: str | None
    edited_messages: list[Message] | None
    edited_output: str | None


def detail(row) -> ReviewDetail:
    request = orjson.loads(row["request"])
    held = InvokeResult.model_validate_json(row["held"]) if row["held"] else None
    approvals = row["approvals"]
    approvals = orjson.loads(approvals) if isinstance(approvals, str) else approvals
    spec = orjson.loads(row["queue_spec"]) if isinstance(row["queue_spec"], str) else row["queue_spec"]
    edited = orjson.loads(row["edited_messages"]) if row["edited_messages"] else None
    return ReviewDetail(
        review_id=row["id"],
        invocation_id=row["invocation_id"],
        state=row["state"],
        stage=row["stage"],
        queue=row["queue"],
        owner=row["owner"],
        workflow=row["workflow"],
        agent=row["agent"],
        rule=row["rule"],
        matched=orjson.loads(row["matched"]),
        config_version=row["config_version"],
        messages=request["messages"],
        output=held.output if held else None,
        requested_at=epoch(row["requested_at"]),
        sla_deadline=epoch(row["sla_deadline"]),
        deadline=epoch(row["deadline"]),
        age_s=round(float(row["age_s"]), 3),
        sla_state="late" if row["late"] else "ok",
        claimed_by=row["claimed_by"],
        approvals=[a["reviewer"] for a in approvals],
        approvals_required=spec.get("approvals_required", 1),
        decided_by=row["decided_by"],
        decided_kind=row["decided_kind"],
        decision=row["decision"],
        reason=row["reason"],
        escalated_to=row["escalated_to"],
        edited_messages=edited,
        edited_output=row["edited_output"],
    )


@dataclass(frozen=True)
class ReviewerIdentity:
    name: str
    queues: frozenset[str]


ERRORS = {code: {"model": ErrorBody} for code in (401, 403, 404, 409, 422)}


def build(svc: "HitlService") -> FastAPI:
    app = FastAPI(
        title="Switchboard reviewer API",
        version="1",
        description="Review invocations held by Switchboard's review gates.",
    )
    bearer = HTTPBearer(auto_error=False)

    async def reviewer(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> ReviewerIdentity:
        if creds is None or creds.scheme.lower() != "bearer" or "\x00" in creds.credentials:
            raise errors.Unauthorized("a bearer token is required")
        row = await svc.store.reviewer_by_token(creds.credentials)
        if row is None:
            raise errors.Unauthorized("unknown or revoked token")
        return ReviewerIdentity(row["name"], frozenset(row["queues"]))

    Who = Annotated[ReviewerIdentity, Depends(reviewer)]

    @app.exception_handler(errors.SwitchboardError)
    async def _coded(_: Request, exc: errors.SwitchboardError) -> JSONResponse:
        status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 500)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        body = {"error": errors.to_wire(exc).model_dump(mode="json", exclude_none=True)}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()]
        error = ErrorInfo(code=errors.InvalidRequest.code, message="invalid request", details=details)
        return JSONResponse({"error": error.model_dump(mode="json", exclude_none=True)}, status_code=422)

    def own_queue(who: ReviewerIdentity, queue: str) -> None:
        svc.queue_spec(queue)  # 404 for a queue the policy does not declare
        if queue not in who.queues:
            raise errors.Forbidden(f"reviewer {who.name!r} does not review queue {queue!r}")

    @app.get("/v1/queues", responses=ERRORS, summary="The reviewer's queues: depth, oldest age, SLA")
    async def list_queues(who: Who) -> list[QueueState]:
        return [q for q in (await svc.queues()).queues if q.queue in who.queues]

    @app.get("/v1/queues/{queue}/reviews", responses=ERRORS, summary="Pending reviews, oldest first")
    async def list_pending(
        queue: QueuePath, who: Who, limit: Annotated[int, Query(gt=0, le=1000)] = 100
    ) -> list[ReviewSummary]:
        own_queue(who, queue)
        return (await svc.pending(PendingRequest(queue=queue, limit=limit))).reviews

    @app.get("/v1/reviews/{review_id}", responses=ERRORS, summary="One review: prompt, output, rule, values")
    async def get_review(review_id: ReviewId, who: Who) -> ReviewDetail:
        row = await svc.store.get(review_id)
        if row is None:
            raise errors.NotFound(f"no review {review_id}")
        if row["queue"] not in who.queues:
            raise errors.Forbidden(f"reviewer {who.name!r} does not review queue {row['queue']!r}")
        return detail(row)

    async def act(review_id: str, who: ReviewerIdentity, verb: str, **kw) -> ReviewDetail:
        row = await svc.store.act(review_id, who.name, who.queues, verb, **kw)
        if verb in ("approve", "reject") and row["state"] != ReviewState.PENDING:
            svc.record_decision(row["queue"], row["state"])
        return detail(await svc.store.get(row["id"]))

    @app.post("/v1/reviews/{review_id}/claim", responses=ERRORS, summary="Take a review to work on")
    async def claim(review_id: ReviewId, who: Who) -> ReviewDetail:
        return await act(review_id, who, "claim")

    @app.post("/v1/reviews/{review_id}/approve", responses=ERRORS, summary="Approve, perhaps with edits")
    async def approve(review_id: ReviewId, who: Who, body: ApproveBody | None = None) -> ReviewDetail:
        body = body or ApproveBody()
        messages = [m.model_dump(mode="json", exclude_none=True) for m in body.edited_messages or []]
        return await act(
            review_id,
            who,
            "approve",
            reason=body.comment,
            edited_messages=messages or None,
            edited_output=body.edited_output,
        )

    @app.post("/v1/reviews/{review_id}/reject", responses=ERRORS, summary="Reject (a reason is required)")
    async def reject(review_id: ReviewId, body: RejectBody, who: Who) -> ReviewDetail:
        return await act(review_id, who, "reject", reason=body.reason)

    @app.post(
        "/v1/reviews/{review_id}/escalate",
        responses=ERRORS,
        summary="Move to another queue; its clock starts",
    )
    async def escalate(review_id: ReviewId, body: EscalateBody, who: Who) -> ReviewDetail:
        row = await svc.store.get(review_id)
        if row is None:
            raise errors.NotFound(f"no review {review_id}")
        target = body.to or orjson.loads(row["queue_spec"]).get("escalate_to")
        if target is None:
            raise errors.InvalidRequest(f"queue {row['queue']!r} has no escalate_to; name a queue in `to`")
        if target == row["queue"]:
            raise errors.InvalidRequest("a review cannot be escalated to its own queue")
        spec = svc.queue_spec(target)
        new = await act(review_id, who, "escalate", reason=body.reason, escalate=(target, spec))
        svc.record_decision(row["queue"], "escalated")
        return new

    @app.get(
        "/v1/audit.csv",
        responses={**ERRORS, 200: {"content": {"text/csv": {}}}},
        response_class=Response,
        summary="The audit trail of the reviewer's queues for [since, until) as RFC 4180 CSV",
    )
    async def audit_csv(
        who: Who,
        since: Annotated[datetime, Query(description="UTC ISO-8601, inclusive")],
        until: Annotated[datetime, Query(description="UTC ISO-8601, exclusive")],
        fmt: Annotated[Literal["csv"], Query(alias="format")] = "csv",
    ) -> Response:
        rows = await svc.store.audit_rows(_utc(since), _utc(until), sorted(who.queues))
        return Response(export.to_csv(rows), media_type="text/csv; charset=utf-8")

    return app


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts

"""The reviewers' HTTP API (OpenAPI at /openapi.json). Who is asking comes only from the bearer
token: none, unknown or revoked is 401; a review or queue outside the reviewer's queues is 403;
an unknown one 404; a decision on a review that is no longer pending (decided, timed out,
escalated away) or a second approval by the same reviewer is 409. Errors become responses here,
in one handler, with the same machine codes as on NATS.

No `from __future__ import annotations`: FastAPI reads the dependency annotations at runtime."""

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from services.hitl import console
from services.hitl.reviewing import (
    QUEUE_NAME,
    REVIEW_ID,
    ApproveBody,
    EscalateBody,
    RejectBody,
    ReviewDetail,
    ReviewerIdentity,
    Reviewing,
    status_of,
)
from shared.contracts import ErrorInfo, QueueState, ReviewSummary
from switchboard_sdk import errors

if TYPE_CHECKING:
    from services.hitl.service import HitlService

ReviewId = Annotated[str, Path(pattern=REVIEW_ID, description="the review's id")]
QueuePath = Annotated[str, Path(pattern=QUEUE_NAME)]


class ErrorBody(BaseModel):
    error: ErrorInfo


ERRORS = {code: {"model": ErrorBody} for code in (401, 403, 404, 409, 422)}


def build(svc: "HitlService") -> FastAPI:
    """The reviewers' API, and the console in the browser beside it (services/hitl/console.py):
    both over the same `Reviewing`, so neither can see or decide what the other may not."""
    app = FastAPI(
        title="Switchboard reviewer API",
        version="1",
        description="Review invocations held by Switchboard's review gates.",
    )
    reviewing = Reviewing(svc)
    bearer = HTTPBearer(auto_error=False)

    async def reviewer(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> ReviewerIdentity:
        if creds is None or creds.scheme.lower() != "bearer":
            raise errors.Unauthorized("a bearer token is required")
        return await reviewing.identify(creds.credentials)

    Who = Annotated[ReviewerIdentity, Depends(reviewer)]

    @app.exception_handler(errors.SwitchboardError)
    async def _coded(_: Request, exc: errors.SwitchboardError) -> JSONResponse:
        status = status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        body = {"error": errors.to_wire(exc).model_dump(mode="json", exclude_none=True)}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()]
        error = ErrorInfo(code=errors.InvalidRequest.code, message="invalid request", details=details)
        return JSONResponse({"error": error.model_dump(mode="json", exclude_none=True)}, status_code=422)

    @app.get("/v1/queues", responses=ERRORS, summary="The reviewer's queues: depth, oldest age, SLA")
    async def list_queues(who: Who) -> list[QueueState]:
        return await reviewing.queues(who)

    @app.get("/v1/queues/{queue}/reviews", responses=ERRORS, summary="Pending reviews, oldest first")
    async def list_pending(
        queue: QueuePath, who: Who, limit: Annotated[int, Query(gt=0, le=1000)] = 100
    ) -> list[ReviewSummary]:
        return await reviewing.pending(who, queue, limit)

    @app.get("/v1/reviews/{review_id}", responses=ERRORS, summary="One review: prompt, output, rule, values")
    async def get_review(review_id: ReviewId, who: Who) -> ReviewDetail:
        return await reviewing.review(who, review_id)

    @app.post("/v1/reviews/{review_id}/claim", responses=ERRORS, summary="Take a review to work on")
    async def claim(review_id: ReviewId, who: Who) -> ReviewDetail:
        return await reviewing.claim(who, review_id)

    @app.post("/v1/reviews/{review_id}/approve", responses=ERRORS, summary="Approve, perhaps with edits")
    async def approve(review_id: ReviewId, who: Who, body: ApproveBody | None = None) -> ReviewDetail:
        return await reviewing.approve(who, review_id, body or ApproveBody())

    @app.post("/v1/reviews/{review_id}/reject", responses=ERRORS, summary="Reject (a reason is required)")
    async def reject(review_id: ReviewId, body: RejectBody, who: Who) -> ReviewDetail:
        return await reviewing.reject(who, review_id, body)

    @app.post(
        "/v1/reviews/{review_id}/escalate",
        responses=ERRORS,
        summary="Move to another queue; its clock starts",
    )
    async def escalate(review_id: ReviewId, body: EscalateBody, who: Who) -> ReviewDetail:
        return await reviewing.escalate(who, review_id, body)

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
        return Response(await reviewing.audit_csv(who, since, until), media_type="text/csv; charset=utf-8")

    console.mount(app, reviewing, svc.settings.console_refresh_s)
    return app

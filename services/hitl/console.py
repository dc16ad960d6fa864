"""The reviewer console: server-rendered pages under /console/ over the same `Reviewing` as the
reviewers' API, so a reviewer sees and decides exactly what the API would let them.

Sign-in takes the reviewer's token and keeps it in an HTTP-only, SameSite=Strict cookie together
with a random nonce; every form carries a CSRF token derived from both (an HMAC keyed by the
reviewer's token), checked on every POST before anything else. Templates autoescape everything
agents sent (prompts, outputs, matched values); the one script is vendored in static/ and a
Content-Security-Policy allows nothing else. Pages refresh only their marked fragments, never a
form being filled in."""

from __future__ import annotations

import difflib
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from services.hitl.reviewing import (
    REVIEW_ID,
    ApproveBody,
    EscalateBody,
    HistoryFilter,
    RejectBody,
    ReviewDetail,
    ReviewerIdentity,
    Reviewing,
    status_of,
)
from switchboard_sdk import errors

PREFIX = "/console"
SESSION_COOKIE = "sb_console"
SIGNIN_COOKIE = "sb_console_signin"
HERE = Path(__file__).parent
DECISIONS = ("approved", "rejected", "timeout", "escalated")
DONE = {  # what a reviewer is told after a decision (never text they sent, so nothing to escape)
    "approved": "You approved this review.",
    "approval": "Your approval is recorded; the queue needs another reviewer's too.",
    "rejected": "You rejected this review.",
    "escalated": "You escalated this review.",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_FORM_BYTES = 2_000_000


@dataclass(frozen=True)
class Session:
    who: ReviewerIdentity
    csrf: str


def _csrf(token: str, nonce: str) -> str:
    return hmac.new(token.encode(), f"console-csrf:{nonce}".encode(), hashlib.sha256).hexdigest()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def _utc(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if epoch else "-"


def _until(epoch: float) -> str:
    left = epoch - datetime.now(UTC).timestamp()
    return f"in {_age(left)}" if left >= 0 else f"{_age(-left)} ago"


templates = Jinja2Templates(directory=HERE / "templates")  # autoescape is on for every template
templates.env.filters.update(age=_age, utc=_utc, until=_until)


def mount(app: FastAPI, reviewing: Reviewing, refresh_s: float) -> None:
    """Serve the console under /console/ of the reviewers' API server (and / sends people there)."""
    app.mount(PREFIX, build(reviewing, refresh_s))

    @app.get("/", include_in_schema=False)
    async def _root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=303)


def build(reviewing: Reviewing, refresh_s: float) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        context.update(base=PREFIX, refresh_s=refresh_s)
        return templates.TemplateResponse(request, name, context, status_code=status, headers=HEADERS)

    async def session(request: Request) -> Session:
        nonce, _, token = request.cookies.get(SESSION_COOKIE, "").partition(".")
        who = await reviewing.identify(token)
        return Session(who, _csrf(token, nonce))

    async def posted(request: Request) -> tuple[Session, dict[str, str]]:
        """The signed-in reviewer and the form they sent, refused (403) without the session's
        CSRF token before anything is read or changed."""
        current = await session(request)
        fields = await _form(request)
        if not hmac.compare_digest(fields.get("csrf", ""), current.csrf):
            raise errors.Forbidden("this form did not come from your console session (CSRF check failed)")
        return current, fields

    @app.exception_handler(errors.SwitchboardError)
    async def _error(request: Request, exc: errors.SwitchboardError) -> Response:
        if isinstance(exc, errors.Unauthorized):
            response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
            response.delete_cookie(SESSION_COOKIE, path=PREFIX)
            return response
        try:
            current = await session(request)
        except errors.SwitchboardError:
            current = None
        context = {"message": exc.message, "code": exc.code, "session": current}
        return page(request, "error.html", status_of(exc), **context)

    # --- signing in and out ---------------------------------------------------------------

    @app.get("/sign-in", response_class=HTMLResponse)
    async def sign_in_form(request: Request) -> HTMLResponse:
        return _sign_in_page(page, request)

    @app.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        fields = await _form(request)
        expected = request.cookies.get(SIGNIN_COOKIE, "")
        if not expected or not hmac.compare_digest(fields.get("signin", ""), expected):
            raise errors.Forbidden("the sign-in form was stale or not from this console; try again")
        token = fields.get("token", "").strip()
        try:
            await reviewing.identify(token)
        except errors.Unauthorized:
            return _sign_in_page(page, request, "That token is unknown or revoked.", 401)
        response = RedirectResponse(f"{PREFIX}/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            f"{secrets.token_urlsafe(16)}.{token}",
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        response.delete_cookie(SIGNIN_COOKIE, path=PREFIX)
        return response

    @app.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        await posted(request)
        response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # --- the inbox ------------------------------------------------------------------------

    async def inbox_context(who: ReviewerIdentity) -> dict:
        queues = await reviewing.queues(who)
        pending = [r for q in queues for r in await reviewing.pending(who, q.queue)]
        pending.sort(key=lambda r: (r.requested_at, r.review_id))
        return {"queues": queues, "pending": pending}

    @app.get("/", response_class=HTMLResponse)
    async def inbox(request: Request) -> HTMLResponse:
        current = await session(request)
        return page(request, "inbox.html", session=current, **await inbox_context(current.who))

    @app.get("/fragments/inbox", response_class=HTMLResponse)
    async def inbox_fragment(request: Request) -> HTMLResponse:
        current = await session(request)
        return page(request, "inbox_list.html", **await inbox_context(current.who))

    # --- one review -----------------------------------------------------------------------

    def review_page(request: Request, current: Session, review: ReviewDetail, status: int = 200, **extra):
        return page(
            request,
            "review.html",
            status,
            session=current,
            review=review,
            targets=[q for q in reviewing.policy_queues() if q != review.queue],
            editable=_editable(review),
            **extra,
        )

    @app.get("/reviews/{review_id}", response_class=HTMLResponse)
    async def show_review(request: Request, review_id: str, done: str | None = None) -> HTMLResponse:
        current = await session(request)
        review = await reviewing.review(current.who, _review_id(review_id))
        return review_page(request, current, review, notice=DONE.get(done or ""))

    @app.get("/fragments/reviews/{review_id}/status", response_class=HTMLResponse)
    async def review_status(request: Request, review_id: str) -> HTMLResponse:
        current = await session(request)
        review = await reviewing.review(current.who, _review_id(review_id))
        return page(request, "review_status.html", session=current, review=review)

    async def decide(request: Request, review_id: str, verb: str, make_body) -> Response:
        """Apply one decision; a refusal (already decided, timed out, escalated away, invalid
        input) shows the review as it now is, with why nothing was applied."""
        current, fields = await posted(request)
        review_id = _review_id(review_id)
        try:
            body = make_body(fields, await reviewing.review(current.who, review_id))
            decided = await getattr(reviewing, verb)(current.who, review_id, body)
        except (errors.Conflict, errors.InvalidRequest, ValidationError) as exc:
            refused = _invalid_message(exc) if isinstance(exc, ValidationError) else exc.message
            status = 409 if isinstance(exc, errors.Conflict) else 422
            review = await reviewing.review(current.who, review_id)
            return review_page(request, current, review, status, refused=refused)
        done = {"reject": "rejected", "escalate": "escalated"}.get(verb)
        done = done or ("approval" if decided.state == "pending" else "approved")
        return RedirectResponse(f"{PREFIX}/reviews/{review_id}?{urlencode({'done': done})}", status_code=303)

    @app.post("/reviews/{review_id}/approve")
    async def approve(request: Request, review_id: str) -> Response:
        return await decide(request, review_id, "approve", _approve_body)

    @app.post("/reviews/{review_id}/reject")
    async def reject(request: Request, review_id: str) -> Response:
        return await decide(
            request, review_id, "reject", lambda f, _: RejectBody(reason=f.get("reason", "").strip())
        )

    @app.post("/reviews/{review_id}/escalate")
    async def escalate(request: Request, review_id: str) -> Response:
        return await decide(
            request,
            review_id,
            "escalate",
            lambda f, _: EscalateBody(to=f.get("to") or None, reason=f.get("reason", "").strip()),
        )

    @app.post("/reviews/{review_id}/edit", response_class=HTMLResponse)
    async def preview_edit(request: Request, review_id: str) -> HTMLResponse:
        """Approve with edits, step one: the edit as a diff, to confirm or go back."""
        current, fields = await posted(request)
        review = await reviewing.review(current.who, _review_id(review_id))
        before, after = _original(review), _edited(fields, review)
        return page(
            request,
            "confirm_edit.html",
            session=current,
            review=review,
            fields=fields,
            diff=_diff(before, after),
            changed=before != after,
        )

    # --- history --------------------------------------------------------------------------

    @app.get("/history", response_class=HTMLResponse)
    async def history(request: Request) -> HTMLResponse:
        current = await session(request)
        shown, query = _history_filter(request)
        found = await reviewing.history(current.who, shown)
        return page(
            request,
            "history.html",
            session=current,
            rows=found.reviews,
            matching=found.matching,
            query=query,
            decisions=DECISIONS,
            csv_query=urlencode({k: v for k, v in query.items() if v}),
        )

    @app.get("/history.csv")
    async def history_csv(request: Request) -> Response:
        current = await session(request)
        shown, query = _history_filter(request)
        csv = await reviewing.history_csv(current.who, shown)
        name = f"switchboard-reviews-{query['from']}-to-{query['to']}.csv"
        return Response(
            csv,
            media_type="text/csv; charset=utf-8",
            headers={**HEADERS, "Content-Disposition": f'attachment; filename="{name}"'},
        )

    return app


# --- forms --------------------------------------------------------------------------------


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (what every form of the console sends), as field -> value."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise errors.InvalidRequest("expected a form (application/x-www-form-urlencoded)")
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        raise errors.PayloadTooLarge(f"a form may be at most {MAX_FORM_BYTES} bytes")
    try:
        return dict(parse_qsl(raw.decode(), keep_blank_values=True, max_num_fields=2000))
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.InvalidRequest("the form could not be read") from exc


def _sign_in_page(page, request: Request, error: str | None = None, status: int = 200) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    response = page(request, "sign_in.html", status, signin=nonce, error=error)
    response.set_cookie(
        SIGNIN_COOKIE,
        nonce,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _review_id(value: str) -> str:
    if not re.fullmatch(REVIEW_ID, value):
        raise errors.NotFound(f"no review {value!r}")
    return value


def _original(review: ReviewDetail) -> list[str]:
    """The texts a reviewer may edit: the output of a post gate, the messages of a pre gate."""
    if review.stage == "post":
        return [review.output or ""]
    return [m.content for m in review.messages]


def _editable(review: ReviewDetail) -> list[tuple[str, str]]:
    """(label, text) of each text the approve-with-edits editor starts from."""
    if review.stage == "post":
        return [("The model's output", review.output or "")]
    return [(f"Message {i + 1} ({m.role})", m.content) for i, m in enumerate(review.messages)]


def _edited(fields: dict[str, str], review: ReviewDetail) -> list[str]:
    original = _original(review)
    # browsers send CRLF line ends from a textarea; the original text keeps its own
    return [fields.get(f"text-{i}", text).replace("\r\n", "\n") for i, text in enumerate(original)]


def _approve_body(fields: dict[str, str], review: ReviewDetail) -> ApproveBody:
    comment = fields.get("comment", "").strip() or None
    if fields.get("edited") != "1":
        return ApproveBody(comment=comment)
    texts = _edited(fields, review)
    if texts == _original(review):
        return ApproveBody(comment=comment)
    if review.stage == "post":
        return ApproveBody(edited_output=texts[0], comment=comment)
    messages = [m.model_copy(update={"content": t}) for m, t in zip(review.messages, texts, strict=True)]
    return ApproveBody(edited_messages=messages, comment=comment)


@dataclass(frozen=True)
class DiffLine:
    kind: str  # "add" | "del" | "same" | "hunk"
    text: str


def _diff(before: list[str], after: list[str]) -> list[DiffLine]:
    lines: list[DiffLine] = []
    for i, (old, new) in enumerate(zip(before, after, strict=True)):
        if old == new:
            continue
        if len(before) > 1:
            lines.append(DiffLine("hunk", f"message {i + 1}"))
        for line in difflib.ndiff(old.splitlines(), new.splitlines()):
            tag, text = line[:2], line[2:]
            if tag == "? ":
                continue
            lines.append(DiffLine({"+ ": "add", "- ": "del"}.get(tag, "same"), text))
    return lines


def _invalid_message(exc: ValidationError) -> str:
    fields = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
    if "reason" in fields:
        return "A reason is required (at most 2000 characters)."
    return "; ".join(e["msg"] for e in exc.errors())


def _history_filter(request: Request) -> tuple[HistoryFilter, dict[str, str]]:
    q = request.query_params
    today = datetime.now(UTC).date()
    try:
        start = date.fromisoformat(q.get("from") or (today - timedelta(days=6)).isoformat())
        end = date.fromisoformat(q.get("to") or today.isoformat())
    except ValueError as exc:
        raise errors.InvalidRequest("dates are YYYY-MM-DD") from exc
    if end < start:
        raise errors.InvalidRequest("the range ends before it starts")
    queue = q.get("queue") or None
    decision = q.get("decision") or None
    if decision is not None and decision not in DECISIONS:
        raise errors.InvalidRequest(f"decision is one of {', '.join(DECISIONS)}")
    shown = HistoryFilter(
        since=datetime.combine(start, time(), UTC),
        until=datetime.combine(end + timedelta(days=1), time(), UTC),
        queue=queue,
        reviewer=(q.get("reviewer") or "").strip() or None,
        decision=decision,
    )
    query = {
        "queue": queue or "",
        "reviewer": shown.reviewer or "",
        "decision": decision or "",
        "from": start.isoformat(),
        "to": end.isoformat(),
    }
    return shown, query

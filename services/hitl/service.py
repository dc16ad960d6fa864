"""hitl: holds gated invocations for human review. Reviews are stored in PostgreSQL before the agent
is told anything; reviewers decide through the HTTP API (services/hitl/api.py); a sweeper applies
timeouts; decided reviews are handed to a gateway until one reports it acted (exactly once per
review: the gateway de-duplicates by review id, this side retries until acted)."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack, suppress
from datetime import UTC, datetime

import orjson
from nats.errors import NoRespondersError

from services.hitl import api, export
from services.hitl.reviewing import summary
from services.hitl.store import Store, reviewer_wire
from shared import asgi, codec, names
from shared.contracts import (
    DeciderKind,
    ExportReply,
    ExportRequest,
    InvokeRequest,
    InvokeResult,
    Message,
    OpenReview,
    PendingReply,
    PendingRequest,
    QueueOp,
    QueueOpReply,
    QueuesReply,
    QueuesRequest,
    QueueState,
    ResumeReply,
    ResumeRequest,
    ReviewerAdd,
    ReviewerList,
    ReviewerRevoke,
    ReviewersReply,
    ReviewLookup,
    ReviewOpened,
    ReviewStage,
    ReviewState,
    ReviewStatus,
)
from shared.review_policy import QueueSpec
from shared.service import Service
from shared.settings import Settings
from shared.telemetry import metrics
from switchboard_sdk import errors

log = logging.getLogger("switchboard.hitl")


class HitlSettings(Settings):
    http_port: int = 9105
    api_port: int = 9106  # the reviewers' HTTP API and their console in the browser (/console/)
    console_refresh_s: float = 5.0  # how often the console refreshes an inbox or a review's state
    sweep_interval_s: float = 1.0  # timeouts, SLA breaches, gauges, decided reviews to act on
    resume_margin_s: float = 15.0  # lease on a decided review beyond the workflow's worst case


class HitlService(Service):
    name = "hitl"
    settings_class = HitlSettings
    uses_database = True
    settings: HitlSettings

    async def setup(self, stack: AsyncExitStack) -> None:
        env = self.settings.env
        self.store = Store(self.db, env)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._acting: set[asyncio.Task] = set()
        handlers = {
            "open": (OpenReview, self.open, ReviewOpened),
            "status": (ReviewLookup, self.status, None),
            "reviewers.add": (ReviewerAdd, self.add_reviewer, ReviewersReply),
            "reviewers.revoke": (ReviewerRevoke, self.revoke_reviewer, ReviewersReply),
            "reviewers.list": (ReviewerList, self.list_reviewers, ReviewersReply),
            "queues": (QueuesRequest, self.queues, QueuesReply),
            "pending": (PendingRequest, self.pending, PendingReply),
            "queue_op": (QueueOp, self.queue_op, QueueOpReply),
            "export": (ExportRequest, self.export, ExportReply),
        }
        for op, (model, handler, reply) in handlers.items():
            on_error = _error_reply(reply) if reply else _status_error
            await self.bus.serve(names.hitl(env, op), names.HITL_QUEUE, model, handler, on_error)
        sweeper = asyncio.create_task(self._sweep_forever())
        stack.push_async_callback(self._stop_sweeper, sweeper)
        await self._start_api(stack)

    # --- the reviewers' API server ----------------------------------------------------

    async def _start_api(self, stack: AsyncExitStack) -> None:
        self.api_port = await asgi.serve(
            api.build(self), self.settings.http_host, self.settings.api_port, stack
        )

    def health_details(self) -> dict:
        return {"api_port": getattr(self, "api_port", None)}

    # --- policy -----------------------------------------------------------------------

    def queue_spec(self, queue: str) -> QueueSpec:
        spec = self.config.active.policy.review_queues.get(queue)
        if spec is None:
            raise errors.NotFound(f"no review queue named {queue!r} in policy {self.config.active.version}")
        return spec

    def record_decision(self, queue: str, decision: str) -> None:
        """Count a reviewer's decision, and act on it now rather than at the next sweep."""
        metrics.HITL_DECISIONS.labels(queue, decision, DeciderKind.HUMAN.value).inc()
        self._wake.set()

    # --- NATS handlers ----------------------------------------------------------------

    async def open(self, req: OpenReview, _msg) -> ReviewOpened:
        row = await self.store.open(req, self.queue_spec(req.queue))
        return ReviewOpened(review_id=row["id"], queue=row["queue"], deadline=row["deadline"].timestamp())

    async def status(self, req: ReviewLookup, _msg) -> ReviewStatus:
        row = await self.store.latest(req.invocation_id)
        if row is None:
            return ReviewStatus(invocation_id=req.invocation_id, found=False)
        result = InvokeResult.model_validate_json(row["result"]) if row["result"] else None
        return ReviewStatus(
            invocation_id=req.invocation_id,
            found=True,
            review_id=row["id"],
            state=row["state"],
            queue=row["queue"],
            result=result,
        )

    async def add_reviewer(self, req: ReviewerAdd, _msg) -> ReviewersReply:
        for queue in req.queues:
            self.queue_spec(queue)
        token, row = await self.store.add_reviewer(req.name, req.queues, req.by)
        log.info("reviewer added", extra={"reviewer": req.name, "queues": req.queues, "by": req.by})
        return ReviewersReply(reviewers=[reviewer_wire(row, token)])

    async def revoke_reviewer(self, req: ReviewerRevoke, _msg) -> ReviewersReply:
        row = await self.store.revoke_reviewer(req.name, req.by)
        log.info("reviewer revoked", extra={"reviewer": req.name, "by": req.by})
        return ReviewersReply(reviewers=[reviewer_wire(row)])

    async def list_reviewers(self, _req: ReviewerList, _msg) -> ReviewersReply:
        return ReviewersReply(reviewers=[reviewer_wire(r) for r in await self.store.reviewers()])

    async def queues(self, _req: QueuesRequest | None = None, _msg=None) -> QueuesReply:
        stats = await self.store.queue_stats()
        out = []
        for name, spec in sorted(self.config.active.policy.review_queues.items()):
            s = stats.get(name)
            depth = s["depth"] if s else 0
            late = s["late"] if s else 0
            out.append(
                QueueState(
                    queue=name,
                    owner=spec.owner,
                    depth=depth,
                    oldest_age_s=round(float(s["oldest_s"]), 1) if s else None,
                    sla_s=spec.sla_s,
                    late=late,
                    sla_state="empty" if not depth else ("late" if late else "ok"),
                    on_timeout=spec.timeout_action,
                    timeout_s=spec.timeout_s,
                )
            )
        return QueuesReply(queues=out)

    async def pending(self, req: PendingRequest, _msg=None) -> PendingReply:
        self.queue_spec(req.queue)
        return PendingReply(reviews=[summary(r) for r in await self.store.pending(req.queue, req.limit)])

    async def queue_op(self, req: QueueOp, _msg) -> QueueOpReply:
        self.queue_spec(req.queue)
        if req.op == "extend":
            if req.by_s is None:
                raise errors.InvalidRequest("extend needs by_s")
            affected = await self.store.extend(req.queue, req.by_s, req.actor, req.reason)
        else:
            if req.to is None or req.to == req.queue:
                raise errors.InvalidRequest("reassign needs another queue in `to`")
            affected = await self.store.reassign(
                req.queue, req.to, self.queue_spec(req.to), req.actor, req.reason
            )
        log.info(
            "queue operation",
            extra={
                "op": req.op,
                "queue": req.queue,
                "affected": affected,
                "by": req.actor,
                "reason": req.reason,
            },
        )
        return QueueOpReply(affected=affected)

    async def export(self, req: ExportRequest, _msg) -> ExportReply:
        rows = await self.store.audit_rows(_utc(req.since), _utc(req.until))
        return ExportReply(csv=export.to_csv(rows), rows=len(rows))

    # --- timeouts, SLA, gauges, and acting on decisions --------------------------------

    async def _stop_sweeper(self, task: asyncio.Task) -> None:
        self._stopping.set()
        self._wake.set()
        with suppress(Exception):
            await asyncio.wait_for(task, self.settings.drain_timeout_s)
        if self._acting:
            await asyncio.wait(set(self._acting), timeout=self.settings.drain_timeout_s)

    async def _sweep_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep failed")
            self._wake.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.sweep_interval_s)

    async def sweep(self) -> None:
        policy = self.config.active.policy
        for row, kind in await self.store.expire_due(dict(policy.review_queues)):
            metrics.HITL_DECISIONS.labels(row["queue"], kind, DeciderKind.SYSTEM.value).inc()
            log.info(
                "review timed out",
                extra={"review_id": row["id"], "invocation_id": row["invocation_id"], "action": row["state"]},
            )
        for queue in await self.store.sla_breaches():
            metrics.HITL_SLA_BREACHES.labels(queue).inc()
        stats = await self.store.queue_stats()
        for queue in set(policy.review_queues) | set(stats):
            s = stats.get(queue)
            metrics.HITL_QUEUE_DEPTH.labels(queue).set(s["depth"] if s else 0)
            metrics.HITL_OLDEST_PENDING.labels(queue).set(float(s["oldest_s"]) if s else 0)
        for row in await self.store.take_decided(self._lease_s(policy)):
            task = asyncio.create_task(self._act(row))
            self._acting.add(task)
            task.add_done_callback(self._acting.discard)

    def _lease_s(self, policy) -> float:
        worst = max((sum(t.timeout_ms for t in w.tiers) for w in policy.workflows.values()), default=0)
        return worst / 1000 + self.settings.resume_margin_s

    async def _act(self, row) -> None:
        """Ask a gateway to act on one decided review; record what followed once it has, then publish
        the final result."""
        req = resume_request(row)
        try:
            reply = await self.bus.request(
                names.gateway_resume(self.settings.env),
                req,
                ResumeReply,
                timeout=self._lease_s(self.config.active.policy) - 1,
            )
        except errors.Unavailable as exc:
            log.warning(
                "no gateway acted on a decided review", extra={"review_id": row["id"], "error": str(exc)}
            )
            if isinstance(exc.__cause__, NoRespondersError):  # none running: ask again soon
                await self.store.retry_soon(row["id"], self.settings.sweep_interval_s * 2)
            return
        if reply.result is None:
            log.warning(
                "gateway could not act yet", extra={"review_id": row["id"], "error": str(reply.error)}
            )
            return
        result = reply.result
        outcome = result.status.value
        if result.review_id and result.review_id != row["id"]:
            outcome += f" (review {result.review_id})"
        if await self.store.acted(row["id"], action_of(req, result), outcome, result.model_dump_json()):
            # Published only once recorded: a caller subscribes, then asks the record, so it either
            # reads the result there or hears it (published before the record, it could do neither).
            subject = names.result(self.settings.env, req.request.invocation_id)
            await self.bus.nc.publish(subject, codec.encode(result))


def resume_request(row) -> ResumeRequest:
    """The decided review as a gateway needs it, with the reviewer's edits applied."""
    request = InvokeRequest.model_validate_json(row["request"])
    edited = row["edited_messages"]
    messages = [Message.model_validate(m) for m in orjson.loads(edited)] if edited else None
    held = InvokeResult.model_validate_json(row["held"]) if row["held"] else None
    if held is not None and row["edited_output"] is not None:
        held = held.model_copy(update={"output": row["edited_output"]})
    return ResumeRequest(
        review_id=row["id"],
        stage=row["stage"],
        decision=row["state"],
        decided_by=row["decided_by"],
        decided_kind=row["decided_kind"],
        reason=row["reason"],
        request=request,
        edited_messages=messages,
        held=held,
    )


def action_of(req: ResumeRequest, result: InvokeResult) -> str:
    """What followed the decision, for the audit trail."""
    if req.decision is ReviewState.REJECTED:
        withheld = "not sent to the model" if req.stage is ReviewStage.PRE else "output withheld"
        return f"rejected ({withheld})"
    if req.stage is ReviewStage.POST:
        return "output released"
    # approved before the call: plan and budget are decided at resume, and may refuse it then
    return "sent to the model" if result.attempts else "not sent to the model"


def _utc(ts: float) -> datetime:
    try:
        return datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise errors.InvalidRequest(f"timestamp {ts} is out of range") from exc


def _error_reply(model):
    return lambda exc, _raw: model(error=errors.to_wire(exc))


def _status_error(exc, raw) -> ReviewStatus:
    return ReviewStatus(invocation_id="", error=errors.to_wire(exc))

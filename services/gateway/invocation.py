"""One invocation's path through the gateway, as steps: admit (claim the id), reserve, pre review
gate, plan, call the tiers, post review gate; then (in the service) store, reply and record.
A review gate is one step: it stores the review and answers `pending_review`; the decision comes
back as a resume, which runs the rest of the steps for that invocation.

The reservation is decided before the plan: planning debits a provider's per-minute quota when
it hands out a tier, so a call the budget refuses must never take one."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from services.gateway import access_log
from services.gateway.admission import admit
from services.gateway.gates import Facts, Match
from services.gateway.holds import HoldKeeper
from services.gateway.idempotency import Replay
from services.gateway.planning import Plan, PlannedTier
from services.gateway.streaming import StreamRelay
from shared import names, pricing, tokens
from shared.contracts import (
    Attempt,
    AttemptEvent,
    AttemptOutcome,
    AttemptStartedEvent,
    BudgetUnavailableEvent,
    DeciderKind,
    ErrorInfo,
    ExtendRequest,
    FallbackEvent,
    InvocationEvent,
    InvokeRequest,
    InvokeResult,
    OpenReview,
    Reservation,
    ReserveRequest,
    ResumeRequest,
    ReviewOpened,
    ReviewStage,
    ReviewState,
    SettleRequest,
    Status,
    TierOutcome,
    Usage,
)
from shared.live_config import ActivePolicy
from shared.policy import WorkflowSpec
from shared.providers import ProviderCallError
from shared.providers.base import CallParams, Completion
from shared.telemetry import genai, metrics, tracing
from switchboard_sdk import errors

if TYPE_CHECKING:
    from services.gateway.service import GatewayService

log = logging.getLogger("switchboard.invocation")
_tracer = tracing.tracer("switchboard.gateway")


def max_in_flight_s(workflow: WorkflowSpec) -> float:
    """The longest a live gateway may hold an id in flight: every tier's timeout, and a margin."""
    return sum(t.timeout_ms for t in workflow.tiers) / 1000 + 30


class Invocation:
    """One invocation's life as an ordered list of steps. A step may set `result` (the answer so
    far) and may end the walk (`done`: refused, held for review); `run` is the one guard around
    them that always settles the budget: actual usage after a call, nothing otherwise."""

    def __init__(
        self,
        gw: GatewayService,
        req: InvokeRequest,
        active: ActivePolicy,
        workflow: WorkflowSpec,
        started: float,
        *,
        resume: ResumeRequest | None = None,
        refusal: errors.SwitchboardError | None = None,
        relay: StreamRelay | None = None,
    ) -> None:
        self.gw = gw
        self.bus = gw.bus
        self.env = gw.settings.env
        self.req = req
        self.active = active
        self.workflow = workflow
        self.started = started
        self.resume = resume
        self.refusal = refusal  # identity or agent policy said no: answered once the id is claimed
        self.relay = relay  # a streamed invocation: where its chunks go
        self.trace_id = tracing.trace_id_hex()
        trace.get_current_span().set_attributes(
            {"switchboard.invocation_id": req.invocation_id, "switchboard.workflow": req.workflow}
        )
        self.reservation: Reservation | None = None
        self.hold_token = uuid.uuid4().hex  # this try's: a retry's takes the reservation over
        self.estimate = 0
        self.result: InvokeResult | None = None
        self.done = False  # a step answered for good: the rest do not run
        self.replay: bytes | None = None  # a retry of a finished invocation: its first reply
        self.digest: bytes | None = None  # the claimed id's request fingerprint (idempotency)
        self.keep = True  # store the answer against the id (a dependency's refusal is not kept)
        self._began = False
        self._plan_now: Plan | None = None
        self._params: CallParams | None = None
        self._used: tuple[Usage | None, str | None] = (None, None)  # what this process's call used
        self._called = False  # this process walked the tiers (its attempts are its to record)
        self._keeper: HoldKeeper | None = None  # a stream's: keeps its reservation held

    def steps(self) -> list[Callable[[], Awaitable[None]]]:
        """The path of a new invocation, or of one resumed after its review was decided."""
        if self.resume is None:
            return [self.admit, self.reserve, self.pre_gate, self.plan, self.call_tiers, self.post_gate]
        if self.resume.decision is ReviewState.REJECTED:
            return [self.rejected]
        if self.resume.stage is ReviewStage.POST:
            return [self.release]
        return [self.reserve, self.plan, self.call_tiers, self.post_gate]

    async def run(self) -> InvokeResult | None:
        """Run the steps until one answers; None when the answer is a replay (`self.replay`).
        The caller settles (`settle_used`) once it has stored the answer; a walk that raises
        settles here."""
        try:
            for step in self.steps():
                await step()
                if self.done:
                    break
        except Replay as replay:
            self.replay = replay.stored
            return None
        except (errors.DuplicateInFlight, errors.IdempotencyConflict):
            raise  # the id is another call's: nothing was reserved, nothing is forgotten
        except errors.Paused as exc:  # refused before it started: nothing reserved, nothing called
            await self._forget()
            self.result = self._result(Status.REJECTED, error=errors.to_wire(exc))
        except errors.SwitchboardError as exc:
            # Refused by a dependency (the budget unavailable and the workflow fail_closed, the
            # review store down): answered and recorded like any invocation, and retryable by its id.
            await self._forget()
            self.result = self.failed(exc)
        except BaseException:
            await self._forget()
            await self.settle_used()
            raise
        return self.result

    async def settle_used(self) -> None:
        """Settle the reservation to what this try's calls used (release it when none was made).
        Sent once the answer is stored: a gateway killed before that leaves the hold to a retry,
        which takes it over; one killed after it leaves a stored answer, whose replay sends the
        settle again (`settle_replayed`). Never a settled call that a retry would charge again."""
        await self.settle(*self._used)

    async def settle_replayed(self, stored: InvokeResult) -> None:
        """Settle again what a stored answer used: a no-op at the budget (a settle applies only to
        a reservation still held) unless the try that stored it died before its own settle was
        sent. Sent without a try's token: the answer is final, so whatever still holds the id's
        reservation is the try that produced it (or one that ran beside it)."""
        answered = stored.status in (Status.SUCCESS, Status.FALLBACK) or (
            stored.error is not None and stored.error.code == errors.StreamInterrupted.code
        )  # an interrupted stream used tokens too
        usage = stored.usage
        if answered and (usage.prompt_tokens or usage.completion_tokens):
            await self._send_settle(usage, stored.model, hold_token=None)

    def _answer(self, result: InvokeResult) -> None:
        self.result, self.done = result, True

    async def _forget(self) -> None:
        self.keep = False
        if self._began:
            await self.gw.idempotency.forget(self.req.invocation_id)

    # --- the steps --------------------------------------------------------------------

    async def admit(self) -> None:
        """Claim the invocation id first: a replay, a duplicate in flight or a conflicting request
        reserves nothing and takes no tier (see `Idempotency.begin`)."""
        worst = max_in_flight_s(self.workflow)
        self.digest = await self.gw.idempotency.begin(self.req, worst)
        self._began = True
        if self.relay is not None and self.digest is not None:
            self.relay.alive = self.gw.idempotency.keeper(self.req.invocation_id, worst)
        if self.refusal is not None:
            raise self.refusal
        admit(self.gw.switches.current, self.req)  # an operator's stop switch raises Paused

    async def reserve(self) -> None:
        """The budget decides first: a refused call takes no quota (nor a reviewer's time)."""
        req = self.req
        self.estimate = self._estimate()
        asked = time.monotonic()
        reservation = await self._reserve()
        self.reservation = reservation  # held until settled, even if planning fails
        if not reservation.allowed:
            self._answer(self._refused(reservation))
            return
        if self.relay is not None and reservation.reserved_tokens:
            self._keeper = self._hold_keeper(asked)
            self.relay.lapsing = self._keeper.lapsing
        self._params = CallParams(
            max_tokens=reservation.max_tokens or req.max_tokens or 1,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stop,
        )

    async def plan(self) -> None:
        """The first plan; after the pre gate, as it debits quota when it hands out a tier."""
        self._plan_now = await self._plan(0)

    async def pre_gate(self) -> None:
        """Hold the invocation for review before any model is called, if a pre rule matches."""
        if not self.gw.gates.applies(self.req.workflow, ReviewStage.PRE):
            return
        match = self.gw.gates.first_match(ReviewStage.PRE, self._facts())
        if match is not None:
            await self.settle()  # plan and budget are decided again when the review is
            self._answer(await self._hold(match, held=None))

    async def call_tiers(self) -> None:
        """Walk the plan's tiers; a stream's reservation is kept held meanwhile."""
        if self._keeper is None:
            await self._call_tiers()
            return
        async with self._keeper.keeping():
            await self._call_tiers()

    async def _call_tiers(self) -> None:
        """Walk the plan's tiers, planning again from where it left off."""
        req, plan, params = self.req, self._plan_now, self._params
        assert plan is not None and params is not None
        attempts: list[Attempt] = []
        failure: ProviderCallError | None = None
        tried = False
        self._called = True
        while True:
            attempts += [
                Attempt(
                    tier=s.tier,
                    provider=s.provider,
                    model=s.model,
                    outcome=AttemptOutcome.SKIPPED,
                    reason=s.reason,
                    source=s.source,
                )
                for s in plan.skipped
            ]
            for tier in plan.tiers:
                tried = True
                attempt, completion, failure = await self._try(tier, params)
                attempts.append(attempt)
                if completion is not None:  # answered: in full, or streamed until it broke
                    self._answered(tier, attempts, completion, failure)
                    return
                if not failure.fallback:
                    break
            if (failure is not None and not failure.fallback) or plan.next_tier is None:
                break
            plan = await self._plan(plan.next_tier)
        if failure is not None and not failure.fallback:
            error: errors.SwitchboardError = errors.ProviderError(failure.message)
        elif not tried:
            error = errors.NoRoute(f"no tier of {req.workflow!r} can be tried now")
        else:
            error = errors.AllTiersFailed(f"every tier of {req.workflow!r} failed")
        self.result = self._result(Status.ERROR, attempts=attempts, error=errors.to_wire(error))

    def _answered(
        self,
        tier: PlannedTier,
        attempts: list[Attempt],
        completion: Completion,
        broken: ProviderCallError | None,
    ) -> None:
        """The result of the tier that answered; an error naming the break when its stream broke."""
        usage = Usage(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens)
        self._used = (usage, tier.model)
        fields = dict(
            attempts=attempts,
            provider=tier.provider,
            model=tier.model,
            output=completion.output,
            finish_reason=completion.finish_reason,
            usage=usage,
        )
        if self.relay is not None:
            fields["stream"] = self.relay.info()
        if broken is not None:  # never a clean end: the agent has part of an answer
            error = errors.StreamInterrupted(
                f"the stream from {tier.provider}/{tier.model} broke after {self.relay.sent} chunks:"
                f" {broken.message}"
            )
            self.result = self._result(Status.ERROR, error=errors.to_wire(error), **fields)
            return
        self.result = self._result(Status.SUCCESS if attempts[-1].tier == 0 else Status.FALLBACK, **fields)

    async def post_gate(self) -> None:
        """Hold a model's output for review before the agent gets it, if a post rule matches."""
        result = self.result
        if result is None or result.status not in (Status.SUCCESS, Status.FALLBACK):
            return
        if not self.gw.gates.applies(self.req.workflow, ReviewStage.POST):
            return
        match = self.gw.gates.first_match(ReviewStage.POST, self._facts(result.provider, result.model))
        if match is not None:
            self._answer(await self._hold(match, held=result))

    async def rejected(self) -> None:
        """A review said no: a final result naming who decided and why; no model is called."""
        resume = self.resume
        who = "a review timeout" if resume.decided_kind is DeciderKind.SYSTEM else resume.decided_by
        held = resume.held
        self.result = self._result(
            Status.REJECTED,
            review_id=resume.review_id,
            provider=held.provider if held else None,
            model=held.model if held else None,
            usage=held.usage if held else Usage(),
            attempts=held.attempts if held else [],
            error=errors.to_wire(
                errors.ReviewRejected(
                    f"rejected by {who}: {resume.reason or 'no reason given'}",
                    details=[{"decided_by": resume.decided_by, "decided_kind": resume.decided_kind.value}],
                )
            ),
        )

    async def release(self) -> None:
        """A post review approved: the held output (as the reviewer left it) goes to the agent."""
        held = self.resume.held
        assert held is not None
        self.result = held.model_copy(
            update={
                "review_id": self.resume.review_id,
                "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
            }
        )

    # --- review gates -----------------------------------------------------------------

    def _facts(self, provider: str | None = None, model: str | None = None) -> Facts:
        """Before the call, provider and model are the workflow's first tier (no tier has been
        planned yet); after it, the tier that answered."""
        if provider is None:
            provider, model = self.workflow.tiers[0].provider, self.workflow.tiers[0].model
        spec = self.active.policy.providers.get(provider)
        prices = spec.models.get(model) if spec else None
        out_tokens = self._params.max_tokens if self._params else (self.req.max_tokens or 0)
        cost = (
            (self.estimate * prices.input_usd_per_mtok + out_tokens * prices.output_usd_per_mtok) / 1e6
            if prices
            else 0.0
        )
        return Facts(
            workflow=self.req.workflow,
            agent=self.req.agent,
            provider=provider,
            model=model,
            metadata=self.req.metadata,
            estimated_tokens=self.estimate + out_tokens,
            estimated_cost_usd=cost,
        )

    async def _hold(self, match: Match, held: InvokeResult | None) -> InvokeResult:
        """Store the review durably (the hitl service) before the agent hears anything."""
        opened = await self.bus.request(
            names.hitl(self.env, "open"),
            OpenReview(
                invocation_id=self.req.invocation_id,
                stage=match.stage,
                rule=match.rule,
                queue=match.queue,
                matched=match.matched,
                config_version=self.active.version,
                request=self.req,
                held=held,
                trace_id=self.trace_id,
            ),
            ReviewOpened,
            timeout=self.gw.settings.review_timeout_s,
            unavailable=errors.ReviewUnavailable,
        )
        if opened.error is not None:
            raise errors.ReviewUnavailable(f"the review could not be stored: {opened.error.message}")
        return self._result(
            Status.PENDING_REVIEW,
            review_id=opened.review_id,
            provider=held.provider if held else None,
            model=held.model if held else None,
            usage=held.usage if held else Usage(),
            attempts=held.attempts if held else [],
        )

    def failed(self, exc: errors.SwitchboardError) -> InvokeResult:
        return self._result(Status.ERROR, error=errors.to_wire(exc))

    def _refused(self, reservation: Reservation) -> InvokeResult:
        breach = reservation.breach
        return self._result(
            Status.BUDGET_EXCEEDED,
            error=ErrorInfo(
                code="budget_exceeded",
                message=breach.message if breach else "budget exceeded",
                details=[breach.model_dump(mode="json")] if breach else None,
            ),
        )

    async def _try(self, tier: PlannedTier, params: CallParams):
        """Call one tier: (attempt, completion or None, failure or None); both for a stream
        that broke after its first chunk (what was answered, and why it stopped)."""
        adapter = self.gw.providers.get(tier.provider)
        if adapter is None:
            failure = ProviderCallError(AttemptOutcome.SKIPPED, "provider not in this gateway's policy")
            return self._attempt(tier, failure.outcome, 0.0, reason=failure.message), None, failure
        attempt_id = uuid.uuid4().hex
        await self._started(tier, attempt_id)
        t0 = time.perf_counter()
        with _tracer.start_as_current_span(
            genai.span_name(tier.model),
            kind=SpanKind.CLIENT,
            attributes={
                **genai.request_attributes(adapter.spec.kind.value, tier.model, params),
                "switchboard.tier": tier.tier,
                "switchboard.provider": tier.provider,
            },
        ) as span:
            broken = None
            try:
                timeout_s = tier.timeout_ms / 1000
                if self.relay is None:
                    completion = await adapter.complete(tier.model, self.req.messages, params, timeout_s)
                else:
                    completion, broken = await self.relay.relay(
                        adapter, tier.model, self.req.messages, params, timeout_s, self.estimate
                    )
            except ProviderCallError as exc:
                latency = (time.perf_counter() - t0) * 1000
                span.set_status(StatusCode.ERROR, exc.outcome.value)
                span.set_attributes(
                    {"error.type": exc.outcome.value, "switchboard.outcome": exc.outcome.value}
                )
                self._report(
                    tier, exc.outcome, latency, status_code=exc.status_code, retry_after_s=exc.retry_after_s
                )
                attempt = self._attempt(
                    tier,
                    exc.outcome,
                    latency,
                    status_code=exc.status_code,
                    reason=exc.message,
                    attempt_id=attempt_id,
                )
                return attempt, None, exc
            span.set_attributes(genai.response_attributes(tier.model, completion))
            if broken is not None:
                span.set_status(StatusCode.ERROR, broken.outcome.value)
                span.set_attributes(
                    {"error.type": broken.outcome.value, "switchboard.outcome": broken.outcome.value}
                )
        latency = (time.perf_counter() - t0) * 1000
        if broken is not None:
            self._report(tier, broken.outcome, latency, status_code=200)
            attempt = self._attempt(
                tier, broken.outcome, latency, status_code=200, reason=broken.message, attempt_id=attempt_id
            )
            return attempt, completion, broken
        self._report(
            tier,
            AttemptOutcome.OK,
            latency,
            status_code=200,
            tokens=completion.prompt_tokens + completion.completion_tokens,
        )
        attempt = self._attempt(tier, AttemptOutcome.OK, latency, status_code=200, attempt_id=attempt_id)
        return attempt, completion, None

    async def _started(self, tier: PlannedTier, attempt_id: str) -> None:
        """Record the call before it is made, acknowledged by JetStream (or spooled, when it does
        not take events): a gateway that dies during the call leaves it in the audit log."""
        await self.bus.emit(
            AttemptStartedEvent(
                invocation_id=self.req.invocation_id,
                workflow=self.req.workflow,
                attempt_id=attempt_id,
                tier=tier.tier,
                provider=tier.provider,
                model=tier.model,
                trace_id=self.trace_id,
                config_version=self.active.version,
            )
        )

    @staticmethod
    def _attempt(tier: PlannedTier, outcome: AttemptOutcome, latency_ms: float, **fields) -> Attempt:
        return Attempt(
            tier=tier.tier,
            provider=tier.provider,
            model=tier.model,
            outcome=outcome,
            latency_ms=round(latency_ms, 3),
            **fields,
        )

    def _report(self, tier: PlannedTier, outcome: AttemptOutcome, latency_ms: float, **fields) -> None:
        """Count the call, and tell the router so cooldowns, circuits and quotas follow real calls."""
        metrics.PROVIDER_ATTEMPTS.labels(tier.provider, tier.model, outcome.value).inc()
        metrics.PROVIDER_LATENCY.labels(tier.provider, tier.model).observe(latency_ms / 1000)
        report = TierOutcome(
            invocation_id=self.req.invocation_id,
            workflow=self.req.workflow,
            provider=tier.provider,
            model=tier.model,
            outcome=outcome,
            **fields,
        )
        self.gw.outcomes.report(report)

    # --- control services -------------------------------------------------------------

    async def _plan(self, start: int) -> Plan:
        """The next tier from `start`, planned here from the shared provider state."""
        return await self.gw.planner.plan(self.req, self.active, self.workflow, start)

    def _estimate(self) -> int:
        """Prompt tokens, as the densest tokenizer of any tier that may answer would count them."""
        providers = self.active.policy.providers
        families = {providers[t.provider].models[t.model].tokenizer for t in self.workflow.tiers} | {None}
        return max(tokens.estimate(self.req.messages, family) for family in families)

    async def _reserve(self) -> Reservation:
        """The budget's decision; when it cannot be had, the workflow's `on_unavailable` mode."""
        req = self.req
        try:
            reservation = await self.bus.request(
                names.budget_reserve(self.env),
                ReserveRequest(
                    invocation_id=req.invocation_id,
                    workflow=req.workflow,
                    session_id=req.session_id,
                    agent=req.agent,
                    estimated_prompt_tokens=self.estimate,
                    max_tokens=req.max_tokens,
                    hold_token=self.hold_token,
                ),
                Reservation,
                timeout=self.gw.settings.control_timeout_s,
                unavailable=errors.BudgetUnavailable,
            )
        except errors.BudgetUnavailable as exc:
            return self._budget_unavailable(str(exc))
        if reservation.error is not None:
            if reservation.error.code == errors.BudgetUnavailable.code:
                return self._budget_unavailable(reservation.error.message)
            raise errors.from_wire(reservation.error)
        return reservation

    def _hold_keeper(self, asked: float) -> HoldKeeper:
        req = self.req
        ask = ExtendRequest(
            invocation_id=req.invocation_id,
            workflow=req.workflow,
            session_id=req.session_id,
            agent=req.agent,
            hold_token=self.hold_token,
        )
        ttl_s = self.workflow.budget.reservation_ttl_s
        return HoldKeeper(self.bus, self.env, ask, ttl_s, self.gw.settings.control_timeout_s, asked)

    def _budget_unavailable(self, why: str) -> Reservation:
        budget = self.workflow.budget
        self.bus.emit_later(
            BudgetUnavailableEvent(
                invocation_id=self.req.invocation_id,
                workflow=self.req.workflow,
                session_id=self.req.session_id,
                mode=budget.on_unavailable,
                reason=why,
                config_version=self.active.version,
                trace_id=self.trace_id,
            )
        )
        if budget.on_unavailable != "allow":
            raise errors.BudgetUnavailable(f"budget cannot be checked ({why}); workflow is fail_closed")
        left = max(1, budget.max_tokens_per_invocation - self.estimate)
        return Reservation(allowed=True, max_tokens=min(self.req.max_tokens or left, left))

    # --- after the reply --------------------------------------------------------------

    def _result(self, status: Status, **fields) -> InvokeResult:
        if self.resume is not None:
            fields.setdefault("review_id", self.resume.review_id)
        return InvokeResult(
            invocation_id=self.req.invocation_id,
            status=status,
            workflow=self.req.workflow,
            latency_ms=round((time.perf_counter() - self.started) * 1000, 3),
            trace_id=self.trace_id,
            config_version=self.active.version,
            **fields,
        )

    async def settle(self, usage: Usage | None = None, model: str | None = None) -> None:
        """Turn the budget reservation into actual usage (none releases it all), once: a second
        call does nothing. The first send only enters the connection's buffer, so whatever is
        published after it on the same connection (the reply) is sent after it; `Settler`
        repeats it until acknowledged."""
        reservation, self.reservation = self.reservation, None
        if reservation is None or not reservation.reserved_tokens:
            return
        await self._send_settle(
            usage or Usage(), model, hold_token=self.hold_token, reserved_tokens=reservation.reserved_tokens
        )

    async def _send_settle(
        self, usage: Usage, model: str | None, *, hold_token: str | None, reserved_tokens: int = 0
    ) -> None:
        req = self.req
        settle = SettleRequest(
            invocation_id=req.invocation_id,
            workflow=req.workflow,
            session_id=req.session_id,
            agent=req.agent,
            reserved_tokens=reserved_tokens,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            model=model,
            hold_token=hold_token,
        )
        await self.gw.settler.send(settle, self.workflow.budget.reservation_ttl_s)

    def _cost_usd(self, result: InvokeResult) -> float | None:
        """What the answer cost at the answering model's prices (None when nothing answered)."""
        if not result.provider or not result.model:
            return None
        usage = result.usage
        try:
            micro = pricing.micro_usd(
                self.active.policy,
                result.provider,
                result.model,
                usage.prompt_tokens,
                usage.completion_tokens,
            )
        except KeyError:
            return None
        return round(micro / 1_000_000, 9)

    def record(self, result: InvokeResult) -> None:
        """Emit events (in the background), log and count."""
        req, bus = self.req, self.bus
        common = {
            "invocation_id": req.invocation_id,
            "workflow": req.workflow,
            "trace_id": self.trace_id,
            "config_version": self.active.version,
        }
        mine = result.attempts if self._called else []  # a released review's were recorded before
        tried = [a for a in mine if a.outcome is not AttemptOutcome.SKIPPED]
        for a in tried:
            bus.emit_later(AttemptEvent(**common, **a.model_dump(exclude={"source"})))
        for before, after in itertools.pairwise(mine):
            if before.outcome is AttemptOutcome.OK or before.outcome is AttemptOutcome.CLIENT_ERROR:
                break
            skipped = before.outcome is AttemptOutcome.SKIPPED
            reason = (before.reason or "skipped") if skipped else before.outcome.value
            metrics.FALLBACKS.labels(
                req.workflow,
                f"{before.provider}/{before.model}",
                f"{after.provider}/{after.model}",
                (before.source or "skipped") if skipped else before.outcome.value,
            ).inc()
            bus.emit_later(
                FallbackEvent(
                    **common,
                    from_tier=before.tier,
                    from_provider=before.provider,
                    from_model=before.model,
                    to_tier=after.tier,
                    to_provider=after.provider,
                    to_model=after.model,
                    reason=reason,
                    outcome=before.outcome,
                    source=before.source,
                )
            )
        usage = result.usage
        cost = self._cost_usd(result)
        bus.emit_later(
            InvocationEvent(
                **common,
                session_id=req.session_id,
                agent=req.agent,
                status=result.status,
                provider=result.provider,
                model=result.model,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                max_tokens=req.max_tokens,
                estimated_prompt_tokens=self.estimate,
                latency_ms=result.latency_ms,
                attempts=result.attempts,
                error=result.error,
                metadata=req.metadata,
                message_count=len(req.messages),
                output_chars=len(result.output or ""),
                cost_usd=cost,
                stream=result.stream if self._called else None,
            )
        )
        provider, model = result.provider or "", result.model or ""
        if result.stream is not None and self._called:
            metrics.STREAMS.labels(req.workflow, result.stream.end.value).inc()
            if result.stream.first_chunk_ms is not None:
                metrics.STREAM_FIRST_CHUNK.labels(req.workflow).observe(result.stream.first_chunk_ms / 1000)
        metrics.INVOCATIONS.labels(req.workflow, result.status.value, provider, model).inc()
        metrics.INVOCATION_LATENCY.labels(req.workflow, result.status.value).observe(result.latency_ms / 1000)
        spent, _ = self._used  # tokens this process spent (not a released review's)
        if spent is not None and (spent.prompt_tokens or spent.completion_tokens):
            metrics.TOKENS.labels(req.workflow, provider, model, "prompt").inc(spent.prompt_tokens)
            metrics.TOKENS.labels(req.workflow, provider, model, "completion").inc(spent.completion_tokens)
        if cost and spent is not None:
            metrics.SPEND.labels(req.workflow, provider, model).inc(cost)
        access_log.invocation(
            req, result, estimate=self.estimate, attempts=len(tried), trace_id=self.trace_id
        )
        span = trace.get_current_span()
        span.set_attribute("switchboard.status", result.status.value)

"""budget: enforces token and spend limits before any provider is called, and settles afterwards.

Every breach is refused here, counted, and published as a `budget_breach` event carrying the
invocation id, workflow, session, scope, estimate, ceiling and what remains. Limits are read
from the live policy on every request. When Redis cannot be reached, a request that needs it
gets the `budget_unavailable` error, which the gateway maps to the workflow's mode.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from nats.aio.msg import Msg

from services.budget import limits, pricing
from services.budget.ceilings import check_invocation
from services.budget.ledgers import LedgerStore
from shared import names
from shared.contracts import (
    Breach,
    BudgetBreachEvent,
    BudgetScope,
    BudgetShowReply,
    BudgetShowRequest,
    ExtendReply,
    ExtendRequest,
    Reservation,
    ReserveRequest,
    SettleReply,
    SettleRequest,
)
from shared.live_config import ActivePolicy
from shared.policy import BudgetSpec, Policy, WorkflowSpec
from shared.service import Service
from shared.settings import Settings
from shared.telemetry import metrics
from switchboard_sdk import errors

log = logging.getLogger("switchboard.budget")


class BudgetSettings(Settings):
    http_port: int = 9103


class BudgetService(Service):
    name = "budget"
    settings_class = BudgetSettings
    uses_redis = True

    async def setup(self, stack: AsyncExitStack) -> None:
        self.store = LedgerStore(self.redis)
        if self.config.loaded:  # else the first version to arrive sets them
            _export_ceilings(self.config.active)
        self.config.on_change(_export_ceilings)
        env = self.settings.env
        await self.bus.serve(
            names.budget_reserve(env), names.BUDGET_QUEUE, ReserveRequest, self.reserve, self._error_reply
        )
        await self.bus.serve(
            names.budget_settle(env),
            names.BUDGET_QUEUE,
            SettleRequest,
            self.settle,
            lambda exc, _: SettleReply(error=errors.to_wire(exc)),
        )
        await self.bus.serve(
            names.budget_extend(env),
            names.BUDGET_QUEUE,
            ExtendRequest,
            self.extend,
            lambda exc, _: ExtendReply(error=errors.to_wire(exc)),
        )
        await self.bus.serve(
            names.budget_show(env),
            names.BUDGET_QUEUE,
            BudgetShowRequest,
            self.show,
            lambda exc, _: BudgetShowReply(workflow="", error=errors.to_wire(exc)),
        )

    async def reserve(self, req: ReserveRequest, _: Msg) -> Reservation:
        """Check the ceiling, then hold the worst case on the session and spend ledgers at once."""
        active = self.config.active
        policy, version = active.policy, active.version
        workflow = _workflow(active, req.workflow)
        budget = workflow.budget
        estimate = req.estimated_prompt_tokens
        max_tokens, breach = check_invocation(estimate, req.max_tokens, budget.max_tokens_per_invocation)
        if breach is not None:
            return self._refuse(req, breach, version)
        ledgers = self._ledgers(policy, req, budget)
        if not ledgers:
            return Reservation(allowed=True, max_tokens=max_tokens, config_version=version)
        worst = estimate + max_tokens
        cost, priciest = pricing.worst_case(policy, workflow, estimate, max_tokens)
        amounts = limits.amounts(worst, cost)
        refusal = await self.store.reserve(
            req.invocation_id,
            budget.reservation_ttl_s * 1000,
            [(x, amounts[x.scope]) for x in ledgers],
            token=req.hold_token or "",
        )
        if refusal is not None:
            breach = limits.breach(
                refusal,
                session_id=req.session_id,
                estimate=estimate,
                max_tokens=max_tokens,
                priciest=priciest,
                agent=req.agent,
            )
            return self._refuse(req, breach, version)
        return Reservation(allowed=True, max_tokens=max_tokens, reserved_tokens=worst, config_version=version)

    async def settle(self, req: SettleRequest, _: Msg) -> SettleReply:
        """Replace the reservation by actual usage; a duplicate or late settle changes nothing.
        The reply acknowledges it: the gateway sends it again until it has one (an error reply,
        Redis down, is not one)."""
        policy = self.config.active.policy
        workflow = policy.workflows.get(req.workflow)
        if workflow is None:  # left the policy since: its reservations expire by themselves
            return SettleReply()
        budget = workflow.budget
        ledgers = self._ledgers(policy, req, budget)
        if not ledgers:
            return SettleReply()
        used = req.prompt_tokens + req.completion_tokens
        cost = pricing.actual(policy, workflow, req.model, req.prompt_tokens, req.completion_tokens)
        amounts = limits.amounts(used, cost)
        try:
            settled = await self.store.settle(
                req.invocation_id,
                budget.reservation_ttl_s * 1000,
                [(x, amounts[x.scope]) for x in ledgers],
                token=req.hold_token or "",
            )
        except errors.BudgetUnavailable as exc:
            log.warning(
                "settle not applied; the gateway sends it again",
                extra={"invocation_id": req.invocation_id, "workflow": req.workflow, "error": exc.message},
            )
            raise
        if not settled and req.hold_token:  # a try's own settle (not a replay's repeat) found nothing
            log.warning(
                "settle ignored: no reservation held by this try"
                " (a repeat, later than reservation_ttl_s, or taken over by a retry)",
                extra={"invocation_id": req.invocation_id, "workflow": req.workflow},
            )
        return SettleReply(settled=settled)

    async def extend(self, req: ExtendRequest, _: Msg) -> ExtendReply:
        """Keep a try's reservation held for another reservation_ttl_s: a stream goes on for as
        long as its provider keeps sending, which no tier timeout bounds."""
        policy = self.config.active.policy
        workflow = _workflow(self.config.active, req.workflow)
        ledgers = self._ledgers(policy, req, workflow.budget)
        if not ledgers:
            return ExtendReply()
        ttl_ms = workflow.budget.reservation_ttl_s * 1000
        return ExtendReply(
            extended=await self.store.extend(req.invocation_id, ttl_ms, ledgers, req.hold_token)
        )

    async def show(self, req: BudgetShowRequest, _: Msg) -> BudgetShowReply:
        """Ceilings, window usage, reservations in flight and spend today, for `sbctl budget show`."""
        active = self.config.active
        budget = _workflow(active, req.workflow).budget
        reply = BudgetShowReply(
            workflow=req.workflow,
            session_id=req.session_id,
            config_version=active.version,
            budget=budget.model_dump(mode="json"),
        )
        for ledger in limits.ledgers(self.settings.env, req.workflow, budget, req.session_id):
            usage = limits.usage(ledger, await self.store.balance(ledger))
            if ledger.scope is BudgetScope.SESSION:
                reply.session = usage
            else:
                reply.spend_today = usage
        return reply

    def _ledgers(
        self, policy: Policy, req: ReserveRequest | SettleRequest | ExtendRequest, budget: BudgetSpec
    ) -> list:
        agent = policy.agents.get(req.agent) if req.agent else None
        return limits.ledgers(
            self.settings.env,
            req.workflow,
            budget,
            req.session_id,
            agent=req.agent,
            agent_budget=agent.budget if agent else None,
        )

    def _refuse(self, req: ReserveRequest, breach: Breach, version: str) -> Reservation:
        metrics.BUDGET_BREACHES.labels(req.workflow, breach.scope.value).inc()
        log.warning(
            "budget breach",
            extra={
                "invocation_id": req.invocation_id,
                "workflow": req.workflow,
                "session_id": req.session_id,
                "scope": breach.scope.value,
                "ceiling": breach.ceiling,
                "estimated_tokens": breach.estimated_tokens,
                "remaining": breach.remaining,
            },
        )
        self.bus.emit_later(
            BudgetBreachEvent(
                invocation_id=req.invocation_id,
                workflow=req.workflow,
                session_id=req.session_id,
                agent=req.agent,
                config_version=version,
                **breach.model_dump(),
            )
        )
        return Reservation(allowed=False, breach=breach, config_version=version)

    def _error_reply(self, exc: errors.SwitchboardError, _: bytes) -> Reservation:
        return Reservation(allowed=False, error=errors.to_wire(exc), config_version=self.config_version)


def _export_ceilings(active: ActivePolicy) -> None:
    """The daily spend ceilings of the active policy, for the spend-rate alert and dashboard."""
    metrics.SPEND_CEILING.clear()
    for name, workflow in active.policy.workflows.items():
        if workflow.budget.usd_per_day is not None:
            metrics.SPEND_CEILING.labels(name).set(workflow.budget.usd_per_day)


def _workflow(active: ActivePolicy, name: str) -> WorkflowSpec:
    workflow = active.policy.workflows.get(name)
    if workflow is None:
        raise errors.UnknownWorkflow(f"no workflow named {name!r} in policy {active.version}")
    return workflow

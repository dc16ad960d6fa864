"""budget: enforces token limits before any provider is called, and settles afterwards.

Every breach is refused here, counted, and published as a `budget_breach` event carrying the
invocation id, workflow, session, scope, estimate, ceiling and what remains.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from nats.aio.msg import Msg

from services.budget.ceilings import check_invocation
from shared import errors, names
from shared.contracts import Breach, Reservation, ReserveRequest, SettleRequest
from shared.service import Service
from shared.settings import Settings
from shared.telemetry import metrics

log = logging.getLogger("switchboard.budget")


class BudgetSettings(Settings):
    http_port: int = 9103


class BudgetService(Service):
    name = "budget"
    settings_class = BudgetSettings
    uses_redis = True

    async def setup(self, stack: AsyncExitStack) -> None:
        env = self.settings.env
        await self.bus.serve(
            names.budget_reserve(env), names.BUDGET_QUEUE, ReserveRequest, self.reserve, self._error_reply
        )
        await self.bus.serve(
            names.budget_settle(env), names.BUDGET_QUEUE, SettleRequest, self.settle, self._error_reply
        )

    async def reserve(self, req: ReserveRequest, _: Msg) -> Reservation:
        active = self.config.active
        workflow = active.policy.workflows.get(req.workflow)
        if workflow is None:
            raise errors.UnknownWorkflow(f"no workflow named {req.workflow!r} in policy {active.version}")
        max_tokens, breach = check_invocation(
            req.estimated_prompt_tokens, req.max_tokens, workflow.budget.max_tokens_per_invocation
        )
        if breach is not None:
            self._breached(req, breach)
            return Reservation(allowed=False, breach=breach, config_version=active.version)
        return Reservation(
            allowed=True,
            max_tokens=max_tokens,
            reserved_tokens=req.estimated_prompt_tokens + max_tokens,
            config_version=active.version,
        )

    async def settle(self, req: SettleRequest, _: Msg) -> None:
        """Actual usage after the call. Only invocation ceilings exist so far: nothing is held."""
        return None

    def _breached(self, req: ReserveRequest, breach: Breach) -> None:
        metrics.BUDGET_BREACHES.labels(req.workflow, breach.scope.value).inc()
        log.warning(
            "budget breach",
            extra={
                "invocation_id": req.invocation_id,
                "workflow": req.workflow,
                "scope": breach.scope.value,
                "ceiling": breach.ceiling,
                "estimated_tokens": breach.estimated_tokens,
            },
        )
        self.bus.emit_later(
            "budget_breach",
            invocation_id=req.invocation_id,
            workflow=req.workflow,
            session_id=req.session_id,
            **breach.model_dump(mode="json"),
        )

    def _error_reply(self, exc: errors.SwitchboardError, _: bytes) -> Reservation:
        return Reservation(allowed=False, error=errors.to_wire(exc), config_version=self.config_version)

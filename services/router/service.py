"""router: turns a workflow's live policy into an ordered plan of tiers, routing around
providers an operator has blocked. Provider state lives in Redis so every replica agrees."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from nats.aio.msg import Msg
from redis.exceptions import RedisError

from services.router.planner import plan_tiers
from shared import errors, keys, names
from shared.contracts import Plan, PlanRequest
from shared.service import Service
from shared.settings import Settings

log = logging.getLogger("switchboard.router")


class RouterSettings(Settings):
    http_port: int = 9102


class RouterService(Service):
    name = "router"
    settings_class = RouterSettings
    uses_redis = True

    async def setup(self, stack: AsyncExitStack) -> None:
        await self.bus.serve(
            names.router_plan(self.settings.env),
            names.ROUTER_QUEUE,
            PlanRequest,
            self.plan,
            self._error_reply,
        )

    async def plan(self, req: PlanRequest, _: Msg) -> Plan:
        active = self.config.active
        workflow = active.policy.workflows.get(req.workflow)
        if workflow is None:
            raise errors.UnknownWorkflow(f"no workflow named {req.workflow!r} in policy {active.version}")
        tiers, skipped = plan_tiers(workflow, await self._blocked())
        return Plan(workflow=req.workflow, config_version=active.version, tiers=tiers, skipped=skipped)

    async def _blocked(self) -> dict[str, str]:
        """Operator blocks; when Redis is down, route on policy alone (and say so in the log)."""
        try:
            raw = await self.redis.hgetall(keys.provider_blocks(self.settings.env))
        except RedisError as exc:
            log.warning("provider state unavailable; planning from policy alone", extra={"error": repr(exc)})
            return {}
        return {k.decode(): v.decode() for k, v in raw.items()}

    def _error_reply(self, exc: errors.SwitchboardError, _: bytes) -> Plan:
        return Plan(
            workflow="", config_version=self.config_version or "", tiers=[], error=errors.to_wire(exc)
        )

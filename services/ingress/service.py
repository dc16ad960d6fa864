"""ingress: the OpenAI chat-completions API over HTTP (services/ingress/api.py). Each request
becomes the invocation the SDK would send, on the calling agent's own subject, so every policy
applies unchanged; API keys (services/ingress/keys.py) say which agent is calling, and are
issued and revoked by operators over NATS (`sbctl ingress keys`)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from opentelemetry.trace import SpanKind

from services.ingress import api
from services.ingress.keys import Keys
from shared import asgi, codec, names
from shared.contracts import (
    IngressKeyAdd,
    IngressKeyList,
    IngressKeyRevoke,
    IngressKeysReply,
    InvokeRequest,
    InvokeResult,
    StreamChunk,
)
from shared.service import Service
from shared.settings import Settings
from shared.telemetry import tracing
from switchboard_sdk import errors, read_stream

log = logging.getLogger("switchboard.ingress")
_tracer = tracing.tracer("switchboard.ingress")


class IngressSettings(Settings):
    http_port: int = 9107
    api_port: int = 9108  # the OpenAI-compatible API
    invoke_timeout_s: float = 120.0  # how long a gateway may take to answer one invocation
    key_cache_s: float = 2.0  # how long a key lookup is reused (a revocation takes this long elsewhere)


class IngressService(Service):
    name = "ingress"
    settings_class = IngressSettings
    uses_database = True
    settings: IngressSettings

    async def setup(self, stack: AsyncExitStack) -> None:
        env = self.settings.env
        self.keys = Keys(self.db, env, self.settings.key_cache_s)
        self.created = int(time.time())
        handlers = {
            "keys.add": (IngressKeyAdd, self.add_key),
            "keys.revoke": (IngressKeyRevoke, self.revoke_key),
            "keys.list": (IngressKeyList, self.list_keys),
        }
        for op, (model, handler) in handlers.items():
            await self.bus.serve(names.ingress(env, op), names.INGRESS_QUEUE, model, handler, _error_reply)
        settings = self.settings
        self.api_port = await asgi.serve(api.Api(self), settings.http_host, settings.api_port, stack)

    def health_details(self) -> dict:
        return {"api_port": getattr(self, "api_port", None)}

    # --- the request path -------------------------------------------------------------

    async def invoke(self, req: InvokeRequest, http_headers: Mapping[str, str]) -> bytes:
        """Send the invocation on the agent's own subject; the gateway's answer, as it came."""
        subject = self._subject(req)
        if not tracing.exporting():  # the caller's trace context (if any) goes on as it came
            return await self._request(subject, req, _trace_headers(http_headers))
        with _tracer.start_as_current_span(
            "POST /v1/chat/completions",
            context=tracing.extract(dict(http_headers)),
            kind=SpanKind.SERVER,
            attributes={"switchboard.invocation_id": req.invocation_id},
        ):
            return await self._request(subject, req, tracing.inject({}))

    async def _request(self, subject: str, req: InvokeRequest, headers: dict[str, str]) -> bytes:
        try:
            msg = await self.bus.nc.request(
                subject, codec.encode(req), timeout=self.settings.invoke_timeout_s, headers=headers or None
            )
        except NoRespondersError as exc:
            raise errors.ControlPlaneUnavailable("no gateway is serving this environment") from exc
        except NatsTimeout as exc:
            raise errors.Timeout(
                f"no answer from the gateway within {self.settings.invoke_timeout_s:g}s; "
                "repeat the request with the same Idempotency-Key"
            ) from exc
        return msg.data

    async def stream(
        self, req: InvokeRequest, http_headers: Mapping[str, str]
    ) -> AsyncIterator[StreamChunk | InvokeResult]:
        """Send a streamed invocation on the agent's own subject: its chunks, then its final
        result (`read_stream`, the SDK's wire half); close it to stop listening."""
        subject = self._subject(req)
        if not tracing.exporting():
            headers = _trace_headers(http_headers)
        else:
            with _tracer.start_as_current_span(
                "POST /v1/chat/completions",
                context=tracing.extract(dict(http_headers)),
                kind=SpanKind.SERVER,
                attributes={"switchboard.invocation_id": req.invocation_id, "switchboard.stream": True},
            ):
                headers = tracing.inject({})
        got_result = False
        async with contextlib.aclosing(
            read_stream(self.bus.nc, subject, req, self.settings.invoke_timeout_s, headers)
        ) as messages:
            async for message in messages:
                got_result = isinstance(message, InvokeResult)
                yield message
        if not got_result:
            raise errors.ControlPlaneUnavailable("no gateway is serving this environment")

    def _subject(self, req: InvokeRequest) -> str:
        if not names.WORKFLOW_PATTERN.match(req.workflow):
            raise errors.UnknownWorkflow(f"model {req.workflow!r} names no workflow")
        return names.agent_invoke(self.settings.env, req.agent, req.workflow)

    def workflows_for(self, agent: str) -> list[str]:
        """The workflows an agent may invoke under the active policy (its list, else every one)."""
        policy = self.config.active.policy
        spec = policy.agents.get(agent)
        return sorted(spec.workflows if spec is not None else policy.workflows)

    # --- operators' key management (NATS) ---------------------------------------------

    async def add_key(self, req: IngressKeyAdd, _msg) -> IngressKeysReply:
        key = await self.keys.add(req.agent, req.by, req.reason)
        log.info("api key issued", extra={"key_id": key.key_id, "agent": req.agent, "by": req.by})
        return IngressKeysReply(keys=[key])

    async def revoke_key(self, req: IngressKeyRevoke, _msg) -> IngressKeysReply:
        key = await self.keys.revoke(req.key_id, req.by, req.reason)
        log.info("api key revoked", extra={"key_id": key.key_id, "agent": key.agent, "by": req.by})
        return IngressKeysReply(keys=[key])

    async def list_keys(self, req: IngressKeyList, _msg) -> IngressKeysReply:
        return IngressKeysReply(keys=await self.keys.list(req.include_revoked))


def _trace_headers(http_headers: Mapping[str, str]) -> dict[str, str]:
    return {k: http_headers[k] for k in ("traceparent", "tracestate") if k in http_headers}


def _error_reply(exc: errors.SwitchboardError, _raw: bytes) -> IngressKeysReply:
    return IngressKeysReply(error=errors.to_wire(exc))

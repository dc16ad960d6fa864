"""The async client: one NATS connection, invocations as request/reply with trace context."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import nats
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from opentelemetry.trace import SpanKind

from shared import codec, errors, names
from shared.contracts import InvokeRequest, InvokeResult, Message
from shared.settings import Settings
from shared.telemetry import tracing

MessagesIn = str | Sequence[Message | dict]
_tracer = tracing.tracer("switchboard.sdk")


def _messages(messages: MessagesIn) -> list[Message]:
    if isinstance(messages, str):
        return [Message(role="user", content=messages)]
    return [m if isinstance(m, Message) else Message.model_validate(m) for m in messages]


class Client:
    """Async Switchboard client. Use as `async with Client() as sb`, or `connect()`/`close()`."""

    def __init__(
        self,
        nats_url: str | None = None,
        *,
        env: str | None = None,
        agent: str | None = None,
        default_timeout: float = 60.0,
        connect_timeout: float = 5.0,
    ) -> None:
        settings = Settings()
        self.nats_url = nats_url or settings.nats_url
        self.env = names.check_env(env or settings.env)
        self.connect_timeout = connect_timeout
        self.agent = agent
        self.default_timeout = default_timeout
        self._nc: NATS | None = None

    async def connect(self) -> Client:
        if self._nc is None or self._nc.is_closed:
            try:
                # Unlimited reconnects once connected; a bounded wait for the first connection
                # (nats-py would otherwise retry an unreachable server forever).
                self._nc = await asyncio.wait_for(
                    nats.connect(
                        self.nats_url,
                        name=f"switchboard-sdk-{self.env}",
                        connect_timeout=2,
                        max_reconnect_attempts=-1,
                        reconnect_time_wait=0.5,
                    ),
                    timeout=self.connect_timeout,
                )
            except Exception as exc:  # nats-py raises several types for an unreachable server
                raise errors.ControlPlaneUnavailable(
                    f"cannot reach NATS at {self.nats_url}: {exc!r}"
                ) from exc
        return self

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            await nc.drain()

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def invoke(
        self,
        workflow: str,
        messages: MessagesIn,
        *,
        session_id: str | None = None,
        max_tokens: int | None = None,
        metadata: dict | None = None,
        timeout: float | None = None,
        invocation_id: str | None = None,
        agent: str | None = None,
        **params,
    ) -> InvokeResult:
        """Send one invocation and return its typed result (any `status`, including `error`).

        Raises `ControlPlaneUnavailable` when no gateway answers within `timeout`; reuse the
        same `invocation_id` to retry safely (the gateway de-duplicates by it).
        """
        request = InvokeRequest(
            invocation_id=invocation_id or uuid.uuid4().hex,
            workflow=workflow,
            session_id=session_id,
            agent=agent or self.agent,
            messages=_messages(messages),
            max_tokens=max_tokens,
            metadata=metadata or {},
            **params,
        )
        return await self.send(request, timeout=timeout)

    async def send(self, request: InvokeRequest, *, timeout: float | None = None) -> InvokeResult:
        await self.connect()
        timeout = timeout or self.default_timeout
        with _tracer.start_as_current_span(
            f"invoke {request.workflow}",
            kind=SpanKind.CLIENT,
            attributes={"switchboard.invocation_id": request.invocation_id},
        ):
            try:
                msg = await self._nc.request(
                    names.invoke(self.env, request.workflow),
                    codec.encode(request),
                    timeout=timeout,
                    headers=tracing.inject({}),
                )
            except NoRespondersError as exc:
                raise errors.ControlPlaneUnavailable("no gateway is serving this environment") from exc
            except NatsTimeout as exc:
                raise errors.ControlPlaneUnavailable(
                    f"no answer from the gateway within {timeout:g}s"
                ) from exc
        return codec.decode(msg.data, InvokeResult)

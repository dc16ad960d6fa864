"""The async client: one NATS connection, invocations as request/reply with trace context, and
the workflow's degradation mode when the control plane cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Sequence

import nats
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from switchboard_sdk import _direct, _tracing, codec, errors, names, nats_auth
from switchboard_sdk._journal import Journal
from switchboard_sdk._stream import Stream
from switchboard_sdk.contracts import (
    Degradation,
    DegradationPlan,
    DegradationRequest,
    InvokeRequest,
    InvokeResult,
    Message,
    PassthroughEvent,
    ReviewLookup,
    ReviewStatus,
    Status,
)
from switchboard_sdk.settings import ConnectionSettings

MessagesIn = str | Sequence[Message | dict]
log = logging.getLogger("switchboard.sdk")
RECONNECT_EVERY_S = 1.0  # after a failed first connection, how often the background retries


def _messages(messages: MessagesIn) -> list[Message]:
    if isinstance(messages, str):
        return [Message(role="user", content=messages)]
    return [m if isinstance(m, Message) else Message.model_validate(m) for m in messages]


class Client:
    """Async Switchboard client. Use as `async with Client() as sb`, or `connect()`/`close()`.

    While connected it learns each workflow's `degradation` from the live policy and keeps the
    last one it saw, on disk too (`state_dir`), so that an agent started during an outage
    still knows it. When no gateway can be reached, a `fail_closed` workflow (and one whose
    mode was never learned) raises `ControlPlaneUnavailable` at once; a `passthrough` workflow
    calls its providers directly with the agent's own keys, records each call locally, and
    uploads the records to the audit log (kind `passthrough`, `enforced: false`) once the
    plane is back.
    """

    def __init__(
        self,
        nats_url: str | None = None,
        *,
        env: str | None = None,
        agent: str | None = None,
        default_timeout: float = 60.0,
        connect_timeout: float = 5.0,
        state_dir: str | os.PathLike | None = None,
    ) -> None:
        settings = ConnectionSettings.from_env()
        self.settings = settings
        self.nats_url = nats_url or settings.nats_url
        self.env = names.check_env(env or settings.env)
        self.connect_timeout = connect_timeout
        self.agent = nats_auth.check_agent(agent) if agent else None
        self.default_timeout = default_timeout
        self._nc: NATS | None = None
        self._journal = Journal(state_dir, self.env)
        self._modes: dict[str, DegradationPlan] = self._journal.load_modes()
        self._learning: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._connector: asyncio.Task | None = None
        self._uploading = asyncio.Lock()
        self._connecting = asyncio.Lock()
        self._unsent = bool(self._journal.pending())  # records from an earlier run count too

    # --- connection -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def connect(self) -> Client:
        """Connect now; raise `ControlPlaneUnavailable` if NATS does not answer in time.
        Concurrent first calls (a `gather`, the blocking client's threads) share one connection."""
        async with self._connecting:
            return await self._connect()

    async def _connect(self) -> Client:
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
                        reconnected_cb=self._on_reconnect,
                        error_cb=self._on_error,
                        **nats_auth.connect_options(self.settings, self._user),
                    ),
                    timeout=self.connect_timeout,
                )
            except Exception as exc:  # nats-py raises several types for an unreachable server
                raise errors.ControlPlaneUnavailable(
                    f"cannot reach NATS at {self.nats_url}: {exc!r}"
                ) from exc
            self._spawn(self._upload())
        return self

    async def start(self) -> Client:
        """Connect if NATS answers; otherwise keep trying in the background while invocations
        follow their workflow's degradation mode."""
        try:
            await self.connect()
        except errors.ControlPlaneUnavailable as exc:
            log.warning("control plane unreachable; degradation modes apply", extra={"error": exc.message})
            self._keep_connecting()
        return self

    @property
    def _user(self) -> str:
        """The NATS user this client is: its agent's, or (no agent) the operator's."""
        return nats_auth.agent_user(self.agent) if self.agent else nats_auth.OPERATOR

    def _subject(self, workflow: str) -> str:
        """An agent's invocations go to its own subject, where NATS vouches for the name."""
        if self.agent:
            return names.agent_invoke(self.env, self.agent, workflow)
        return names.invoke(self.env, workflow)

    async def close(self) -> None:
        """Stop background work and drain the connection; safe to call twice."""
        tasks = [t for t in (self._connector, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._connector = None
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            await nc.drain()

    async def __aenter__(self) -> Client:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _keep_connecting(self) -> None:
        if self._connector is None or self._connector.done():
            self._connector = asyncio.create_task(self._connect_until_up())

    async def _connect_until_up(self) -> None:
        while self._nc is None or self._nc.is_closed:
            try:
                await self.connect()
            except errors.ControlPlaneUnavailable:
                await asyncio.sleep(RECONNECT_EVERY_S)

    async def _link(self) -> NATS | None:
        """The connection if it is up now; never waits on an outage already seen."""
        if self._nc is not None and not self._nc.is_closed:
            return self._nc if self._nc.is_connected else None
        if self._connector is None:  # never tried: one bounded attempt, then the background
            try:
                await self.connect()
                return self._nc
            except errors.ControlPlaneUnavailable:
                pass
        self._keep_connecting()
        return None

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats error", extra={"error": repr(exc)})  # an outage is handled per invocation

    async def _on_reconnect(self) -> None:
        self._spawn(self._upload())

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- invocations ------------------------------------------------------------------

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
        wait_for_review: float | None = None,
        **params,
    ) -> InvokeResult:
        """Send one invocation and return its typed result (any `status`, including `error`).

        A review gate answers `pending_review` with a `review_id`; with `wait_for_review=S` this
        waits up to S seconds for the final result instead (and returns the pending state if the
        decision has not come by then; `result(invocation_id)` fetches it later).
        Raises `ControlPlaneUnavailable` when no gateway answers within `timeout` (reuse the
        same `invocation_id` to retry safely: the gateway de-duplicates by it), or when no
        gateway can be reached and the workflow is `fail_closed`. A `passthrough` result has
        `enforced` False.
        """
        request = self._request(
            workflow, messages, invocation_id, session_id, agent, max_tokens, metadata, params
        )
        if wait_for_review is None:
            return await self.send(request, timeout=timeout)
        async with self._results(request.invocation_id) as final:
            result = await self.send(request, timeout=timeout)
            return await final(result, wait_for_review)

    def stream(
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
    ) -> Stream:
        """One invocation whose answer streams: sent when iterated, chunks in order, then its
        final result (`usage`, `status`) in `stream.result`::

            async with sb.stream("support-triage", "Summarise this ticket") as stream:
                async for chunk in stream:
                    print(chunk.delta, end="")
            print(stream.result.usage)

        Raises `StreamInterrupted` while iterating if the answer breaks after its first chunk
        (never a clean end), and `ControlPlaneUnavailable` as `invoke` does. `timeout` bounds the
        wait for each message (the first chunk, then each next one). See `Stream`.
        """
        request = self._request(
            workflow, messages, invocation_id, session_id, agent, max_tokens, metadata, params
        )
        return Stream(self, request.model_copy(update={"stream": True}), timeout or self.default_timeout)

    def _request(self, workflow, messages, invocation_id, session_id, agent, max_tokens, metadata, params):
        return InvokeRequest(
            invocation_id=invocation_id or uuid.uuid4().hex,
            workflow=workflow,
            session_id=session_id,
            agent=agent or self.agent,
            messages=_messages(messages),
            max_tokens=max_tokens,
            metadata=metadata or {},
            **params,
        )

    async def result(self, invocation_id: str, *, wait: float | None = None) -> InvokeResult:
        """The final result of an invocation held for review, or its pending state (waiting up to
        `wait` seconds for the decision). Raises `NotFound` if it was never held for review."""
        await self.connect()
        async with self._results(invocation_id) as final:
            msg = await self._nc.request(
                names.hitl(self.env, "status"),
                codec.encode(ReviewLookup(invocation_id=invocation_id)),
                timeout=self.default_timeout,
            )
            status = codec.decode(msg.data, ReviewStatus)
            if status.error is not None:
                raise errors.from_wire(status.error)
            if not status.found:
                raise errors.NotFound(f"invocation {invocation_id} was not held for review")
            current = status.result or InvokeResult(
                invocation_id=invocation_id, status=Status.PENDING_REVIEW, review_id=status.review_id
            )
            return await final(current, wait or 0.0)

    @contextlib.asynccontextmanager
    async def _results(self, invocation_id: str):
        """Listen on sb.<env>.result.<id> from before the ask, so no decision is missed; yields
        `final(current, wait_s)`, which returns the first non-pending result within `wait_s`
        (at once when the control plane is unreachable: nothing will come)."""
        nc = await self._link()
        sub = await nc.subscribe(names.result(self.env, invocation_id)) if nc is not None else None

        async def final(current: InvokeResult, wait_s: float) -> InvokeResult:
            deadline = time.monotonic() + wait_s
            while (
                sub is not None
                and current.status is Status.PENDING_REVIEW
                and (left := deadline - time.monotonic()) > 0
            ):
                try:
                    msg = await sub.next_msg(timeout=left)
                except NatsTimeout:
                    break
                current = codec.decode(msg.data, InvokeResult)
            return current

        try:
            yield final
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def send(self, request: InvokeRequest, *, timeout: float | None = None) -> InvokeResult:
        timeout = timeout or self.default_timeout
        with _tracing.span(f"invoke {request.workflow}", request.invocation_id):
            nc = await self._link()
            if nc is None:
                return await self._degrade(request, f"cannot reach NATS at {self.nats_url}")
            try:
                msg = await nc.request(
                    self._subject(request.workflow),
                    codec.encode(request),
                    timeout=timeout,
                    headers=_tracing.headers() or None,
                )
            except NoRespondersError:
                return await self._degrade(request, "no gateway is serving this environment")
            except NatsTimeout as exc:
                # Not degraded: a gateway may have taken it, and a direct call could run it twice.
                raise errors.ControlPlaneUnavailable(
                    f"no answer from the gateway within {timeout:g}s"
                ) from exc
        result = codec.decode(msg.data, InvokeResult)
        self._answered(request.workflow, result)
        return result

    def _answered(self, workflow: str, result: InvokeResult) -> None:
        """A gateway answered: the plane is up (learn the mode of a new policy version, upload
        what passthrough calls left on disk)."""
        self._learn_later(workflow, result.config_version)
        if self._unsent and not self._uploading.locked():
            self._spawn(self._upload())

    # --- degradation ------------------------------------------------------------------

    def degradation(self, workflow: str) -> DegradationPlan | None:
        """The last degradation plan seen for `workflow` (None: never learned; fail_closed)."""
        return self._modes.get(workflow)

    def _learn_later(self, workflow: str, version: str | None) -> None:
        known = self._modes.get(workflow)
        if workflow in self._learning or (
            known is not None and (version is None or known.config_version == version)
        ):
            return
        self._learning.add(workflow)
        self._spawn(self._learn(workflow))

    async def _learn(self, workflow: str) -> None:
        try:
            nc = self._nc
            if nc is None or not nc.is_connected:
                return
            msg = await nc.request(
                names.degradation(self.env), codec.encode(DegradationRequest(workflow=workflow)), timeout=5.0
            )
            plan = codec.decode(msg.data, DegradationPlan)
            if plan.error is None:
                self._modes[workflow] = plan
                await asyncio.to_thread(self._journal.save_modes, dict(self._modes))
        except Exception as exc:  # the router may be down: keep the last mode seen
            log.info("degradation mode not refreshed", extra={"workflow": workflow, "error": repr(exc)})
        finally:
            self._learning.discard(workflow)

    async def _degrade(self, request: InvokeRequest, reason: str) -> InvokeResult:
        plan = self._modes.get(request.workflow)
        if plan is None or plan.mode is not Degradation.PASSTHROUGH:
            why = "is fail_closed" if plan is not None else "has no known degradation mode (fail_closed)"
            raise errors.ControlPlaneUnavailable(
                f"{reason}; workflow {request.workflow!r} {why}",
                details=[{"workflow": request.workflow, "degradation": Degradation.FAIL_CLOSED.value}],
            )
        result = await _direct.invoke(plan, request)
        event = PassthroughEvent(
            event_id=uuid.uuid4().hex,
            ts=time.time(),
            env=self.env,
            service="sdk",
            invocation_id=request.invocation_id,
            trace_id=_tracing.trace_id_hex(),
            config_version=plan.config_version or "unknown",
            reason=reason,
            workflow=request.workflow,
            session_id=request.session_id,
            agent=request.agent,
            status=result.status,
            provider=result.provider,
            model=result.model,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            latency_ms=result.latency_ms,
            attempts=result.attempts,
            error=result.error,
            metadata=request.metadata,
            message_count=len(request.messages),
            output_chars=len(result.output or ""),
        )
        await asyncio.to_thread(self._journal.append, event)
        self._unsent = True
        if self.connected:  # NATS is up but no gateway answers: the audit stream may still take it
            self._spawn(self._upload())
        return result

    async def _upload(self) -> int:
        """Send every local passthrough record to the audit stream, deleting each only once
        JetStream acknowledged it; returns how many went. Stops at the first failure."""
        sent = 0
        async with self._uploading:
            self._unsent = False
            nc = self._nc
            if nc is None or not nc.is_connected:
                self._unsent = True
                return 0
            js = nc.jetstream()
            for path in await asyncio.to_thread(self._journal.pending):
                try:
                    data = await asyncio.to_thread(path.read_bytes)
                except FileNotFoundError:
                    continue
                try:
                    await js.publish(
                        names.event(self.env, "passthrough"),
                        data,
                        timeout=5.0,
                        headers={"Nats-Msg-Id": path.stem},
                    )
                except Exception as exc:  # the stream may be missing or NATS gone again: next time
                    log.warning("passthrough upload paused", extra={"error": repr(exc), "sent": sent})
                    self._unsent = True
                    break
                await asyncio.to_thread(self._journal.remove, path)
                sent += 1
        return sent

    async def upload_pending(self) -> int:
        """Upload local passthrough records now (also done on every (re)connection)."""
        return await self._upload()

    def pending_records(self) -> int:
        """How many passthrough records wait on this disk for the plane to come back."""
        return len(self._journal.pending())

"""The small error tree of Switchboard, and the two functions that carry it over the wire.

Every error has a machine-readable `code` and says whether retrying may help. Services raise
these; the NATS reply helper and the HTTP handlers turn them into `ErrorInfo` with `to_wire`,
and the SDK turns a wire error back into an exception with `from_wire`.
"""

from __future__ import annotations

from switchboard_sdk.contracts import ErrorInfo


class SwitchboardError(Exception):
    code = "internal"
    retryable = False

    def __init__(self, message: str, *, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(SwitchboardError):
    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    code = "payload_too_large"


class UnknownWorkflow(SwitchboardError):
    code = "unknown_workflow"


class AgentMismatch(InvalidRequest):
    """The request names an agent other than the one its connection is authenticated as."""

    code = "agent_mismatch"


class AgentNotAllowed(SwitchboardError):
    """Policy does not let this agent invoke this workflow."""

    code = "agent_not_allowed"


class DuplicateInFlight(SwitchboardError):
    """The invocation id is already being served; its result will be the first one's."""

    code = "duplicate_in_flight"
    retryable = True


class IdempotencyConflict(InvalidRequest):
    """The invocation id was already used for a different request (another caller, workflow,
    session, prompt or parameters); its reply is never given to this one."""

    code = "idempotency_conflict"


class Unavailable(SwitchboardError):
    """A dependency (a control service, Redis, PostgreSQL) did not answer."""

    code = "unavailable"
    retryable = True


class ControlPlaneUnavailable(Unavailable):
    code = "control_plane_unavailable"


class BudgetUnavailable(Unavailable):
    code = "budget_unavailable"


class RouterUnavailable(Unavailable):
    """No longer raised: the gateway plans without the router. Kept so that code written for
    SDK 0.1.0 that names it still imports; it stays an `Unavailable`, and the wire code of a
    gateway from before the change still decodes to it."""

    code = "router_unavailable"


class ReviewUnavailable(Unavailable):
    """A gated invocation could not be stored for review: refused, never let through unreviewed."""

    code = "review_unavailable"


class NoRoute(SwitchboardError):
    """Every tier of the workflow is blocked or out of headroom."""

    code = "no_route"
    retryable = True


class ProviderError(SwitchboardError):
    code = "provider_error"


class AllTiersFailed(SwitchboardError):
    code = "all_tiers_failed"
    retryable = True


class StreamInterrupted(SwitchboardError):
    """A streamed answer broke after its first chunk: what was sent is partial, never complete."""

    code = "stream_interrupted"
    retryable = True


class StreamNotAllowed(InvalidRequest):
    """The workflow does not stream (policy `streaming: false`, as every workflow whose output a
    post-stage review holds must be)."""

    code = "stream_not_allowed"


class BudgetExceeded(SwitchboardError):
    """A token or spend limit refused the invocation before any model was called."""

    code = "budget_exceeded"


class NotFound(SwitchboardError):
    code = "not_found"


class NotRecordedYet(NotFound):
    """Not in the audit log while the log is behind the event stream: it may be on its way."""

    code = "not_recorded_yet"


class Unauthorized(SwitchboardError):
    """No credential, or one that is unknown or revoked."""

    code = "unauthorized"


class Forbidden(SwitchboardError):
    """A known caller acting outside what it may do (a reviewer outside the review's queue)."""

    code = "forbidden"


class Conflict(SwitchboardError):
    """The target is no longer in a state that allows the action (a review already decided)."""

    code = "conflict"


class ReviewRejected(SwitchboardError):
    """A reviewer, or a review timeout whose action is reject, refused the invocation."""

    code = "review_rejected"


class PolicyError(SwitchboardError):
    code = "invalid_policy"


class Paused(SwitchboardError):
    """An operator stopped new invocations (a stop switch); retry after it is resumed."""

    code = "paused"
    retryable = True


class WorkflowPaused(Paused):
    code = "workflow_paused"


class AgentPaused(Paused):
    code = "agent_paused"


class Refused(SwitchboardError):
    """A governance rule said no: a protected environment, a soak time, a missing acknowledgement."""

    code = "refused"


class UnsupportedDependency(SwitchboardError):
    """A dependency runs a version Switchboard cannot work with (Redis older than 7.0)."""

    code = "unsupported_dependency"


class Timeout(SwitchboardError):
    code = "timeout"
    retryable = True


_BY_CODE: dict[str, type[SwitchboardError]] = {}


def _register(cls: type[SwitchboardError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _register(sub)


_register(SwitchboardError)


def to_wire(exc: BaseException) -> ErrorInfo:
    """Any exception as the wire's error object; unknown ones become `internal`."""
    if isinstance(exc, SwitchboardError):
        return ErrorInfo(code=exc.code, message=exc.message, retryable=exc.retryable, details=exc.details)
    return ErrorInfo(code="internal", message=f"{type(exc).__name__}: {exc}", retryable=False)


def from_wire(error: ErrorInfo) -> SwitchboardError:
    """The wire's error object as the matching exception class (base class when unknown)."""
    cls = _BY_CODE.get(error.code, SwitchboardError)
    exc = cls(error.message, details=error.details)
    exc.code = error.code
    exc.retryable = error.retryable
    return exc

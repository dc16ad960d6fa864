"""Every Switchboard outcome as an HTTP status and an OpenAI-shaped error object, in one place.

The error's class (from the wire's machine code, `errors.from_wire`) picks the status, the most
specific class first; `code` is Switchboard's machine code and `type` OpenAI's vocabulary.
`x-should-retry` carries the error's `retryable` flag, which the OpenAI client obeys instead of
its own guess from the status (it would retry a 429 budget refusal or a 503 pause otherwise).
The table is documented in docs/ingress.md; a test holds the two together.
"""

from __future__ import annotations

from shared.contracts import InvokeResult, Status
from switchboard_sdk import errors

# class -> (HTTP status, OpenAI error type)
STATUS: dict[type[errors.SwitchboardError], tuple[int, str]] = {
    errors.Unauthorized: (401, "authentication_error"),
    errors.Forbidden: (403, "permission_error"),
    errors.AgentNotAllowed: (403, "permission_error"),
    errors.ReviewRejected: (403, "permission_error"),
    errors.NotFound: (404, "not_found_error"),
    errors.UnknownWorkflow: (404, "not_found_error"),
    errors.DuplicateInFlight: (409, "conflict_error"),
    errors.PayloadTooLarge: (413, "invalid_request_error"),
    errors.IdempotencyConflict: (422, "invalid_request_error"),
    errors.InvalidRequest: (400, "invalid_request_error"),
    errors.BudgetExceeded: (429, "insufficient_quota"),
    errors.AllTiersFailed: (502, "api_error"),
    errors.StreamInterrupted: (502, "api_error"),  # a retry of a stream that broke half-way
    errors.ProviderError: (502, "api_error"),
    errors.Paused: (503, "service_unavailable"),
    errors.NoRoute: (503, "service_unavailable"),
    errors.Unavailable: (503, "service_unavailable"),
    errors.Timeout: (504, "timeout"),
    errors.SwitchboardError: (500, "api_error"),
}


PENDING_REVIEW = (202, "pending_review")  # (status, type): the same Idempotency-Key asks again later


def http_status(exc: errors.SwitchboardError) -> tuple[int, str]:
    return next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)


def error_body(exc: errors.SwitchboardError, *, param: str | None = None, **extra) -> tuple[int, dict, dict]:
    """(status, body, headers) of an error; `extra` joins the error object (e.g. `review_id`)."""
    status, kind = http_status(exc)
    return _response(status, kind, exc.code, exc.message, exc.retryable, param=param, **extra)


def _response(
    status: int, kind: str, code: str, message: str, retryable: bool, *, param: str | None = None, **extra
) -> tuple[int, dict, dict]:
    error = {"message": message, "type": kind, "code": code, "param": param, **extra}
    return status, {"error": error}, {"x-should-retry": "true" if retryable else "false"}


def refusal(result: InvokeResult) -> tuple[int, dict, dict] | None:
    """The error response of a result that is not an answer; None for success and fallback."""
    if result.status in (Status.SUCCESS, Status.FALLBACK):
        return None
    extra = {"invocation_id": result.invocation_id}
    if result.review_id:
        extra["review_id"] = result.review_id
    if result.status is Status.PENDING_REVIEW:  # not a failure: accepted, and held for a reviewer
        message = (
            f"held for human review {result.review_id}; repeat the request with the same "
            "Idempotency-Key for the decision"
        )
        return _response(*PENDING_REVIEW, "pending_review", message, False, **extra)
    if result.error is None:  # a refusal always carries its reason; an old gateway might not
        exc = errors.SwitchboardError(f"invocation ended {result.status.value}")
    else:
        exc = errors.from_wire(result.error)
    return error_body(exc, **extra)

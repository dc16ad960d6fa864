"""The status table of docs/ingress.md is the one the ingress applies: every documented code maps
to its documented status and type, and every class the ingress maps is documented."""

from __future__ import annotations

import re

from services.ingress import outcomes
from shared.contracts import ErrorInfo, InvokeResult, Status
from switchboard_sdk import errors
from tests.support.stack import REPO

ROW = re.compile(r"^\| `([a-z_]+)` \| (\d{3}) \| `([a-z_]+)` \|", re.M)


def documented() -> dict[str, tuple[int, str]]:
    text = (REPO / "docs" / "ingress.md").read_text()
    return {code: (int(status), kind) for code, status, kind in ROW.findall(text)}


def test_every_documented_code_gets_its_documented_status_and_type():
    table = documented()
    assert len(table) >= 20
    for code, expected in table.items():
        result = InvokeResult(
            invocation_id="i-1",
            status=Status.PENDING_REVIEW if code == "pending_review" else Status.ERROR,
            error=None if code == "pending_review" else ErrorInfo(code=code, message="m"),
            review_id="r-1" if code == "pending_review" else None,
        )
        status, body, _ = outcomes.refusal(result)
        assert (status, body["error"]["type"], body["error"]["code"]) == (*expected, code)


# Base classes mapped for completeness; an invocation only ever carries a subclass's code.
BASES = {"forbidden", "not_found", "paused"}


def test_every_mapped_class_is_documented():
    assert {cls.code for cls in outcomes.STATUS} - BASES <= set(documented())


def test_retryable_errors_say_so_to_the_client():
    _, _, headers = outcomes.error_body(errors.NoRoute("blocked"))
    assert headers == {"x-should-retry": "true"}
    _, _, headers = outcomes.error_body(errors.from_wire(ErrorInfo(code="budget_exceeded", message="m")))
    assert headers == {"x-should-retry": "false"}


def test_answers_are_not_refusals():
    for status in (Status.SUCCESS, Status.FALLBACK):
        assert outcomes.refusal(InvokeResult(invocation_id="i", status=status)) is None

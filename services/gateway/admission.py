"""Admission: may a new invocation start at all? Checked once, before anything is reserved or
planned; an invocation already past this point finishes whatever is pulled afterwards."""

from __future__ import annotations

from shared.contracts import InvokeRequest, Pauses
from switchboard_sdk import errors


def admit(pauses: Pauses, req: InvokeRequest) -> None:
    """Raise `WorkflowPaused` or `AgentPaused` when an operator's stop switch covers `req`."""
    if (pause := pauses.workflows.get(req.workflow)) is not None:
        raise errors.WorkflowPaused(f"workflow {req.workflow!r} is paused by {pause.by}: {pause.reason}")
    if req.agent is not None and (pause := pauses.agents.get(req.agent)) is not None:
        raise errors.AgentPaused(f"agent {req.agent!r} is paused by {pause.by}: {pause.reason}")

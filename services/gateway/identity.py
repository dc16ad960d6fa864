"""Who is invoking: the agent identity the gateway records and limits, taken from the subject.

An agent's NATS user may publish only on `sb.<env>.agent.<its name>.invoke.*` (the server
enforces it; see deploy/nats/roles.yaml), so the agent token of the subject is the
authenticated name, and a body claiming another name is refused. The plain
`sb.<env>.invoke.*` subject is the operators' (agents cannot publish there when
authentication is on): its `agent` is a label. Policy for a named agent applies either way.
"""

from __future__ import annotations

from shared import names
from shared.contracts import InvokeRequest
from shared.policy import Policy
from switchboard_sdk import errors


def admit(
    req: InvokeRequest, subject: str, policy: Policy
) -> tuple[InvokeRequest, errors.SwitchboardError | None]:
    """The request as the authenticated agent sent it, and why it is refused (None: admitted)."""
    agent = names.agent_of(subject)
    if agent is not None and req.agent != agent:
        claimed, req = req.agent, req.model_copy(update={"agent": agent})
        if claimed is not None:
            return req, errors.AgentMismatch(
                f"the connection is agent {agent!r} but the request claims agent {claimed!r}"
            )
    spec = policy.agents.get(req.agent) if req.agent else None
    if spec is not None and req.workflow not in spec.workflows:
        return req, errors.AgentNotAllowed(f"agent {req.agent!r} may not invoke workflow {req.workflow!r}")
    return req, None

"""The agent SDK: send every model invocation through Switchboard.

    async with Client() as sb:
        result = await sb.invoke("support-triage", "Summarise this ticket", session_id="s-1")

`SyncClient` offers the same for code without an event loop.
"""

from shared.contracts import Attempt, InvokeResult, Status, Usage
from shared.errors import ControlPlaneUnavailable, SwitchboardError
from shared.sdk._client import Client
from shared.sdk._sync import SyncClient

__all__ = [
    # clients
    "Client",
    "SyncClient",
    # results
    "Attempt",
    "InvokeResult",
    "Status",
    "Usage",
    # errors
    "ControlPlaneUnavailable",
    "SwitchboardError",
]

"""The agent SDK: send every model invocation through Switchboard.

    async with Client() as sb:
        result = await sb.invoke("support-triage", "Summarise this ticket", session_id="s-1")

`SyncClient` offers the same for code without an event loop.
"""

from switchboard_sdk._client import Client
from switchboard_sdk._sync import SyncClient
from switchboard_sdk.contracts import Attempt, InvokeResult, Status, Usage
from switchboard_sdk.errors import ControlPlaneUnavailable, SwitchboardError

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

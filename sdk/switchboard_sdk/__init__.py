"""The agent SDK: send every model invocation through Switchboard.

    async with Client() as sb:
        result = await sb.invoke("support-triage", "Summarise this ticket", session_id="s-1")
        async with sb.stream("support-triage", "Draft a reply") as stream:
            async for chunk in stream:
                print(chunk.delta, end="")

`SyncClient` offers the same for code without an event loop.
"""

from switchboard_sdk._client import Client
from switchboard_sdk._stream import Stream, read_stream
from switchboard_sdk._sync import SyncClient, SyncStream
from switchboard_sdk.contracts import Attempt, InvokeResult, Status, StreamChunk, StreamInfo, Usage
from switchboard_sdk.errors import ControlPlaneUnavailable, StreamInterrupted, SwitchboardError

__all__ = [
    # clients
    "Client",
    "SyncClient",
    # streams
    "Stream",
    "StreamChunk",
    "StreamInfo",
    "SyncStream",
    "read_stream",
    # results
    "Attempt",
    "InvokeResult",
    "Status",
    "Usage",
    # errors
    "ControlPlaneUnavailable",
    "StreamInterrupted",
    "SwitchboardError",
]

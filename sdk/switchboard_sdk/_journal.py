"""What the SDK keeps on the agent's disk: the last degradation mode it saw per workflow, and
the passthrough records not yet uploaded.

Layout under the state directory (`state_dir`, else `SB_SDK_STATE_DIR`, else
`$XDG_STATE_HOME/switchboard/sdk` or `~/.local/state/switchboard/sdk`), per environment:

    <env>/modes.json                  {workflow: DegradationPlan}; no keys, only variable names
    <env>/passthrough/<event_id>.json one PassthroughEvent per file, written atomically

One file per record makes the upload idempotent without locks: a record is deleted only after
JetStream acknowledged it, and a record uploaded twice (a crash between the ack and the delete,
or two processes sharing the directory) carries the same event id, which JetStream's duplicate
window and the audit log's primary key both absorb.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import orjson

from switchboard_sdk.contracts import DegradationPlan, PassthroughEvent


def default_root() -> Path:
    if explicit := os.environ.get("SB_SDK_STATE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "switchboard" / "sdk"  # a folder of its own beside the local servers' data


class Journal:
    def __init__(self, root: str | os.PathLike | None, env: str) -> None:
        self.dir = Path(root) if root is not None else default_root()
        self.dir = self.dir / env
        self.records = self.dir / "passthrough"

    # --- degradation modes ----------------------------------------------------------------

    def load_modes(self) -> dict[str, DegradationPlan]:
        try:
            raw = orjson.loads((self.dir / "modes.json").read_bytes())
            return {name: DegradationPlan.model_validate(plan) for name, plan in raw.items()}
        except (OSError, ValueError):  # none yet, or unreadable: fail_closed until learned again
            return {}

    def save_modes(self, modes: dict[str, DegradationPlan]) -> None:
        data = orjson.dumps({name: plan.model_dump(mode="json") for name, plan in modes.items()})
        self._write(self.dir / "modes.json", data)

    # --- passthrough records --------------------------------------------------------------

    def append(self, event: PassthroughEvent) -> None:
        self._write(self.records / f"{event.event_id}.json", event.model_dump_json().encode())

    def pending(self) -> list[Path]:
        """Records not yet uploaded, oldest first."""
        try:
            files = [p for p in self.records.iterdir() if p.suffix == ".json"]
        except FileNotFoundError:
            return []
        return sorted(files, key=_mtime)

    @staticmethod
    def remove(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):  # another process uploaded it too
            path.unlink()

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:  # uploaded by another process meanwhile; removing it again is a no-op
        return 0

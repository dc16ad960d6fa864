"""docs/runbook.md as a script: its ```sh blocks marked `# rehearsed: <incident>/<step>`, run as
written by bash (sbctl of this checkout's virtualenv, curl, psql) against a test's stack.

What the document cannot know is filled in, and only that: SB_ENV is the test's environment; the
services' default ports (`localhost:9104`) become the ports the test's services listen on; a
placeholder such as `<agent>` becomes the value the test read from an earlier step's output."""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from services import catalog
from tests.support.helpers import SIM_KEYS, infra_env, run_process
from tests.support.stack import REPO

RUNBOOK = REPO / "docs/runbook.md"
BLOCK = re.compile(r"```sh\n(.*?)```", re.S)
MARK = re.compile(r"^#\s*rehearsed:\s*(\S+)\s*$")
PLACEHOLDER = re.compile(r"<([a-z][a-z-]*)>")


def steps(text: str | None = None) -> dict[str, list[str]]:
    """Marked step -> its command lines (comment lines dropped), in document order."""
    out: dict[str, list[str]] = {}
    for block in BLOCK.findall(text if text is not None else RUNBOOK.read_text()):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        mark = MARK.match(lines[0]) if lines else None
        if mark:
            assert mark.group(1) not in out, f"step {mark.group(1)} is marked twice"
            out[mark.group(1)] = [line for line in lines[1:] if not line.startswith("#")]
    return out


@dataclass
class Ran:
    command: str  # as run, after substitution
    code: int
    out: str
    err: str
    seconds: float


@dataclass
class Rehearsal:
    """One incident's steps run against `stack`; `values` fills the placeholders."""

    stack: object
    operator: str = "oncall-rehearsal"
    values: dict[str, str] = field(default_factory=dict)
    log: list[Ran] = field(default_factory=list)

    def _ports(self, line: str) -> str:
        for entry in catalog.SERVICES:
            service = self.stack.services.get(entry.name)
            if service is not None:
                line = line.replace(f"localhost:{entry.ports['http_port']}", f"localhost:{service.ops.port}")
        return line

    def _fill(self, line: str) -> str:
        def value(match: re.Match) -> str:
            name = match.group(1)
            assert name in self.values, f"the rehearsal has no value for <{name}> in: {line}"
            return self.values[name]

        return self._ports(PLACEHOLDER.sub(value, line))

    def _env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)  # sbctl of this virtualenv first
        env = infra_env(self.stack.infra, SB_ENV=self.stack.env, SB_OPERATOR=self.operator, **SIM_KEYS)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        env["SB_SIMULATOR_URL"] = self.stack.sim.url
        return env

    async def run(self, step: str, timeout: float = 60.0) -> list[Ran]:
        """Every command line of the step, in order, each in bash; all of them, whatever they exit
        with (the runbook says what to do next, the test checks it)."""
        lines = steps()[step]
        assert lines, f"step {step} has no commands"
        ran = []
        for line in lines:
            command = self._fill(line)
            t0 = time.monotonic()
            code, out, err = await run_process(
                "bash",
                "-c",
                command,
                cwd=self.stack.policy_dir.parent,  # `config/` is the test's policy copy
                env=self._env(),
                timeout=timeout,
            )
            ran.append(Ran(command, code, out, err, time.monotonic() - t0))
        self.log += ran
        return ran

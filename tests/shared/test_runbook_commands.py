"""Every `sbctl` command in the runbook and the README is one that sbctl accepts."""

from __future__ import annotations

import re
import shlex

import pytest

from shared.sbctl.cli import parser
from tests.support.stack import REPO

BLOCK = re.compile(r"```sh\n(.*?)```", re.S)
PLACEHOLDERS = {"<version>": "41"}  # a value of the type the option takes; any other is "x"


def commands() -> list[tuple[str, str]]:
    found = []
    for doc in ("docs/runbook.md", "README.md"):
        for block in BLOCK.findall((REPO / doc).read_text()):
            for line in block.splitlines():
                line = line.strip().removeprefix(".venv/bin/")
                if line.startswith("sbctl "):
                    for part in line.split(" && "):
                        found.append((doc, shlex.split(part, comments=True)))
    return found


@pytest.mark.parametrize(("doc", "argv"), commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_documented_command_parses(doc, argv):
    argv = [PLACEHOLDERS.get(a, "x") if a.startswith("<") else a for a in argv[1:]]
    parser().parse_args(argv)  # argparse exits 2 on anything it does not accept


def test_the_runbook_uses_the_governance_commands():
    used = {" ".join(argv[1:3]) for doc, argv in commands() if doc == "docs/runbook.md"}
    for needed in ("config history", "config rollback", "agent pause", "workflow pause", "config promote"):
        assert needed in used, needed

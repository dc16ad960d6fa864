"""docs/degradation.md: every row names tests (or fault-suite phases) that exist."""

from __future__ import annotations

import re

from tests.faults.suite import FAULTS
from tests.support.stack import REPO

ROW = re.compile(r"^\| (?!down |---)(.+)\|\s*$", re.M)
TEST = re.compile(r"`(tests/[\w/]+\.py)?::(test_\w+)`")


def test_every_row_of_the_degradation_table_names_tests_that_exist():
    text = (REPO / "docs/degradation.md").read_text()
    rows = ROW.findall(text)
    assert len(rows) >= 10
    for row in rows:
        cells = [c.strip() for c in row.split("|")]
        down, tests = cells[0], cells[-1]
        if down == "hitl":  # the review service is not part of this version
            assert tests == "none yet"
            continue
        named = TEST.findall(tests)
        assert named, f"row {down!r} names no test"
        path = None
        for file, name in named:
            path = file or path  # `::test_x` continues the file named before it
            source = (REPO / path).read_text()
            assert re.search(rf"^(async )?def {name}\(", source, re.M), f"{path}::{name} (row {down!r})"
        for phase in re.findall(r"fault suite: ([^|;]+)", tests):
            for fault in phase.split(","):
                assert fault.strip() in {f.name for f in FAULTS}, f"no fault phase {fault.strip()!r}"

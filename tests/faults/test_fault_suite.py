"""The fault suite's short form, run by `make test`: every fault, short holds.
`make faults` runs every fault with longer holds and writes docs/reliability.md."""

from __future__ import annotations

import pytest

from tests.faults import suite


@pytest.mark.timeout(900)
async def test_the_short_fault_suite_loses_nothing_and_charges_nothing_twice():
    outcome = await suite.run(suite.FAULTS, **suite.SHORT)

    report = suite.table(outcome.results)
    assert [r.fault.name for r in outcome.results] == [f.name for f in suite.FAULTS]
    assert all(r.calls for r in outcome.results), report  # every phase carried load
    assert outcome.ok, f"{report}\nspend ledger {outcome.spend_ledger} vs usage {outcome.spend_expected}"

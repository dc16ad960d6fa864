"""The per-invocation ceiling and the spend arithmetic, without infrastructure."""

from __future__ import annotations

from services.budget import pricing
from services.budget.ceilings import check_invocation
from shared.contracts import BudgetScope
from shared.policy import load_dir_or_raise
from tests.support.stack import REPO

POLICY = load_dir_or_raise(REPO / "config")
TRIAGE = POLICY.workflows["support-triage"]  # gpt-sim-large ($2.50/$10), then claude-sim-sonnet ($3/$15)


def test_a_request_under_the_ceiling_keeps_its_max_tokens():
    assert check_invocation(100, 500, 4000) == (500, None)


def test_no_max_tokens_gets_what_the_ceiling_leaves():
    assert check_invocation(100, None, 4000) == (3900, None)


def test_a_prompt_alone_over_the_ceiling_is_refused_even_without_max_tokens():
    max_tokens, breach = check_invocation(4100, None, 4000)
    assert max_tokens == 0
    assert breach.scope is BudgetScope.INVOCATION
    assert (breach.estimated_tokens, breach.ceiling, breach.remaining) == (4100, 4000, 0)
    assert breach.message.startswith("per-invocation ceiling of 4000 tokens exceeded by 100")


def test_the_worst_case_is_the_dearest_tier():
    assert pricing.worst_case(POLICY, TRIAGE, 8, 100) == (8 * 3 + 100 * 15, "anthropic-sim/claude-sim-sonnet")


def test_the_actual_cost_is_at_the_model_that_answered_or_the_dearest_when_unknown():
    assert pricing.actual(POLICY, TRIAGE, "gpt-sim-large", 10, 20) == 10 * 2.5 + 20 * 10
    assert pricing.actual(POLICY, TRIAGE, "retired-model", 10, 20) == 10 * 3 + 20 * 15
    assert pricing.actual(POLICY, TRIAGE, None, 0, 0) == 0
    assert pricing.actual(POLICY, TRIAGE, "gpt-sim-large", 1, 0) == 3  # 2.5 micro-USD, rounded up


def test_usd_amounts_read_without_trailing_zeros():
    assert pricing.format_usd(pricing.micro_usd(200)) == "$200"
    assert pricing.format_usd(14_024) == "$0.014024"

"""The Redis-held limits of a workflow (its session window and its daily spend), built from the
live policy on every call so that a changed ceiling applies to the next invocation, and how
they read to an agent or an operator."""

from __future__ import annotations

from services.budget.ledgers import Balance, Ledger, Refusal
from services.budget.pricing import format_usd, micro_usd, usd
from shared import keys
from shared.contracts import Breach, BudgetScope, LedgerUsage
from shared.policy import AgentBudget, BudgetSpec

DAY_MS = 86_400_000


SPEND_SCOPES = (BudgetScope.SPEND, BudgetScope.AGENT_SPEND)


def ledgers(
    env: str,
    workflow: str,
    budget: BudgetSpec,
    session_id: str | None,
    agent: str | None = None,
    agent_budget: AgentBudget | None = None,
) -> list[Ledger]:
    """The limits an invocation draws on, all reserved at once: the session's and the workflow's,
    and the agent's own when policy gives it a budget; none when nothing applies."""
    out = []
    if session_id and budget.session:
        out.append(
            Ledger(
                BudgetScope.SESSION,
                keys.budget_session(env, workflow, session_id),
                budget.session.tokens,
                budget.session.window_s * 1000,
                aligned=False,
            )
        )
    if budget.usd_per_day:
        out.append(
            Ledger(
                BudgetScope.SPEND,
                keys.budget_spend(env, workflow),
                micro_usd(budget.usd_per_day),
                DAY_MS,
                aligned=True,
            )
        )
    if agent and agent_budget and agent_budget.tokens:
        out.append(
            Ledger(
                BudgetScope.AGENT_TOKENS,
                keys.budget_agent_tokens(env, agent),
                agent_budget.tokens,
                agent_budget.window_s * 1000,
                aligned=False,
            )
        )
    if agent and agent_budget and agent_budget.usd_per_day:
        out.append(
            Ledger(
                BudgetScope.AGENT_SPEND,
                keys.budget_agent_spend(env, agent),
                micro_usd(agent_budget.usd_per_day),
                DAY_MS,
                aligned=True,
            )
        )
    return out


def amounts(tokens: int, micro_usd_cost: int) -> dict[BudgetScope, int]:
    """What an invocation holds (or settles to) on a ledger of each scope."""
    return {
        BudgetScope.SESSION: tokens,
        BudgetScope.AGENT_TOKENS: tokens,
        BudgetScope.SPEND: micro_usd_cost,
        BudgetScope.AGENT_SPEND: micro_usd_cost,
    }


def breach(
    refusal: Refusal,
    *,
    session_id: str | None,
    estimate: int,
    max_tokens: int,
    priciest: str,
    agent: str | None = None,
) -> Breach:
    """Which limit refused the call, and by how much."""
    ledger, amount, b = refusal.ledger, refusal.amount, refusal.balance
    over = b.used + b.reserved + amount - ledger.limit
    remaining = max(0, ledger.limit - b.used - b.reserved)
    worst = estimate + max_tokens
    if ledger.scope not in SPEND_SCOPES:
        whose = f"session {session_id}" if ledger.scope is BudgetScope.SESSION else f"agent {agent}"
        return Breach(
            scope=ledger.scope,
            estimated_tokens=worst,
            ceiling=ledger.limit,
            remaining=remaining,
            message=(
                f"{whose} budget of {ledger.limit} tokens per {ledger.window_ms // 1000} s "
                f"exceeded by {over}: {b.used} used and {b.reserved} reserved in the window, "
                f"this call needs up to {worst} (~{estimate} prompt + {max_tokens} max_tokens)"
            ),
        )
    return Breach(
        scope=ledger.scope,
        estimated_tokens=worst,
        ceiling=usd(ledger.limit),
        remaining=usd(remaining),
        message=(
            f"{'agent ' + str(agent) + ' ' if ledger.scope is BudgetScope.AGENT_SPEND else ''}"
            f"daily spend ceiling of {format_usd(ledger.limit)} exceeded by {format_usd(over)}: "
            f"{format_usd(b.used)} spent and {format_usd(b.reserved)} reserved today (UTC), "
            f"this call may cost up to {format_usd(amount)} at {priciest} prices "
            f"for ~{estimate} prompt + {max_tokens} max_tokens"
        ),
    )


def usage(ledger: Ledger, b: Balance) -> LedgerUsage:
    """A ledger's balance for operators, in tokens or in USD."""
    spend = ledger.scope in SPEND_SCOPES
    scale = usd if spend else float
    return LedgerUsage(
        unit="usd" if spend else "tokens",
        limit=scale(ledger.limit),
        used=scale(b.used),
        reserved=scale(b.reserved),
        remaining=scale(max(0, ledger.limit - b.used - b.reserved)),
        in_flight=b.in_flight,
        window_s=ledger.window_ms // 1000,
    )

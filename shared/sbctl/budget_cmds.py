"""sbctl budget show: a workflow's ceilings and where its session and spend ledgers stand.

Asks the budget service over NATS; the CLI never reads the budget's Redis keys itself.
"""

from __future__ import annotations

from shared import names
from shared.contracts import BudgetShowReply, BudgetShowRequest, LedgerUsage
from shared.sbctl.context import connect
from shared.sbctl.output import emit_json, fail
from switchboard_sdk import errors


async def show(args, settings) -> int:
    bus = await connect(settings)
    try:
        reply = await bus.request(
            names.budget_show(args.env),
            BudgetShowRequest(workflow=args.workflow, session_id=args.session),
            BudgetShowReply,
            timeout=args.timeout,
            unavailable=errors.BudgetUnavailable,
        )
    except errors.SwitchboardError as exc:
        fail(f"the budget service did not answer: {exc.message}", code=exc.code, as_json=args.json)
    finally:
        await bus.drain(5)
    if reply.error:
        fail(reply.error.message, code=reply.error.code, as_json=args.json)
    if args.json:
        emit_json(reply.model_dump(mode="json"))
        return 0
    budget = reply.budget or {}
    rows = [
        ("per invocation", f"{budget['max_tokens_per_invocation']:,} tokens (prompt estimate + max_tokens)")
    ]
    session = budget.get("session")
    if args.session:
        rows.append(
            (f"session {args.session}", _ledger(reply.session) if reply.session else "no session budget")
        )
    elif session:
        rows.append(
            (
                "each session",
                f"{session['tokens']:,} tokens per {session['window_s']} s, per session id "
                "(--session ID: one session's use)",
            )
        )
    else:
        rows.append(("each session", "no session budget"))
    rows.append(("spend today", _ledger(reply.spend_today) if reply.spend_today else "no spend ceiling"))
    rows.append(("reservations", f"expire after {budget['reservation_ttl_s']} s unless settled"))
    rows.append(("redis down", budget["on_unavailable"]))
    width = max(len(label) for label, _ in rows)
    print(f"workflow {reply.workflow}  (policy version {reply.config_version})")
    for label, text in rows:
        print(f"  {label:<{width}}  {text}")
    return 0


def _ledger(u: LedgerUsage) -> str:
    period = "per UTC day" if u.unit == "usd" else f"per {u.window_s} s"
    return (
        f"{_amount(u, u.used)} used + {_amount(u, u.reserved)} reserved ({u.in_flight} in flight) "
        f"of {_amount(u, u.limit)} {period}; {_amount(u, u.remaining)} left"
    )


def _amount(u: LedgerUsage, value: float) -> str:
    return f"${value:,.6f}".rstrip("0").rstrip(".") if u.unit == "usd" else f"{value:,.0f} tokens"

"""sbctl hitl: review queues for the on-call engineer (queues, pending, extend, reassign), reviewer
tokens (reviewers add|list|revoke) and the audit export. Every lever is recorded in the review
audit trail with who pulled it and why."""

from __future__ import annotations

import getpass
import re
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from shared import names
from shared.bus import Bus
from shared.contracts import (
    ExportReply,
    ExportRequest,
    PendingReply,
    PendingRequest,
    QueueOp,
    QueueOpReply,
    QueuesReply,
    QueuesRequest,
    ReviewerAdd,
    ReviewerList,
    ReviewerRevoke,
    ReviewersReply,
)
from shared.sbctl.context import from_options
from shared.sbctl.output import emit_json, fail, table
from switchboard_sdk import errors

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def operator() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def duration_s(text: str) -> int:
    """`90s`, `30m`, `2h`, `1d` as seconds."""
    found = _DURATION.match(text.strip())
    if not found:
        raise SystemExit(f"a duration is a number and a unit (s, m, h, d), e.g. 30m; got {text!r}")
    return int(found.group(1)) * _UNIT_S[found.group(2)]


def timestamp(text: str) -> float:
    """ISO-8601 (UTC unless it says otherwise) as unix seconds."""
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"not an ISO-8601 date or time: {text!r}") from None
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()


async def _ask(args, settings, op: str, body, reply_model, timeout: float = 10.0):
    bus = await Bus.connect(settings.nats_url, env=args.env, service="sbctl")
    try:
        reply = await bus.request(names.hitl(args.env, op), body, reply_model, timeout=timeout)
    except errors.SwitchboardError as exc:
        fail(f"the hitl service did not answer: {exc.message}", code=exc.code, as_json=args.json)
    finally:
        await bus.drain(5)
    if reply.error:
        fail(reply.error.message, code=reply.error.code, as_json=args.json)
    return reply


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


async def queues(args, settings) -> int:
    reply = await _ask(args, settings, "queues", QueuesRequest(), QueuesReply)
    if args.json:
        emit_json(reply.model_dump(mode="json"))
        return 0
    rows = [
        {
            "queue": q.queue,
            "owner": q.owner,
            "depth": q.depth,
            "oldest": _age(q.oldest_age_s),
            "sla": f"{q.sla_state} ({q.late} late, sla {_age(q.sla_s)})",
            "on timeout": f"{q.on_timeout} after {_age(q.timeout_s)}",
        }
        for q in reply.queues
    ]
    print(table(rows, ["queue", "owner", "depth", "oldest", "sla", "on timeout"]))
    return 0


async def pending(args, settings) -> int:
    reply = await _ask(
        args, settings, "pending", PendingRequest(queue=args.queue, limit=args.limit), PendingReply
    )
    if args.json:
        emit_json(reply.model_dump(mode="json"))
        return 0
    rows = [
        {
            "review": r.review_id,
            "invocation": r.invocation_id,
            "stage": r.stage.value,
            "workflow": r.workflow,
            "rule": r.rule,
            "age": _age(r.age_s),
            "sla": r.sla_state,
            "times out in": _age(max(0.0, r.deadline - time.time())),
            "claimed by": r.claimed_by,
        }
        for r in reply.reviews
    ]
    print(table(rows, list(rows[0]) if rows else ["review", "invocation", "age", "sla"]))
    return 0


async def extend(args, settings) -> int:
    body = from_options(
        QueueOp, op="extend", queue=args.queue, by_s=duration_s(args.by), actor=operator(), reason=args.reason
    )
    reply = await _ask(args, settings, "queue_op", body, QueueOpReply)
    if args.json:
        emit_json(reply.model_dump(mode="json"))
    else:
        print(f"extended {reply.affected} pending review(s) in {args.queue} by {args.by}")
    return 0


async def reassign(args, settings) -> int:
    body = from_options(
        QueueOp, op="reassign", queue=args.queue, to=args.to, actor=operator(), reason=args.reason
    )
    reply = await _ask(args, settings, "queue_op", body, QueueOpReply)
    if args.json:
        emit_json(reply.model_dump(mode="json"))
    else:
        print(f"moved {reply.affected} pending review(s) from {args.queue} to {args.to}")
    return 0


async def reviewers_add(args, settings) -> int:
    queues_ = [q.strip() for q in args.queues.split(",") if q.strip()]
    body = from_options(ReviewerAdd, name=args.name, queues=queues_, by=operator())
    reply = await _ask(args, settings, "reviewers.add", body, ReviewersReply)
    reviewer = reply.reviewers[0]
    if args.json:
        emit_json(reviewer.model_dump(mode="json"))
    else:
        print(
            f"reviewer {reviewer.name} for {', '.join(reviewer.queues)}; token (shown once, stored hashed):"
        )
        print(reviewer.token)
    return 0


async def reviewers_list(args, settings) -> int:
    reply = await _ask(args, settings, "reviewers.list", ReviewerList(), ReviewersReply)
    if args.json:
        emit_json(reply.model_dump(mode="json"))
        return 0
    rows = [
        {
            "name": r.name,
            "queues": ",".join(r.queues),
            "created": datetime.fromtimestamp(r.created_at, UTC).isoformat(timespec="seconds"),
            "by": r.created_by,
            "revoked": datetime.fromtimestamp(r.revoked_at, UTC).isoformat(timespec="seconds")
            if r.revoked_at
            else None,
        }
        for r in reply.reviewers
    ]
    print(table(rows, ["name", "queues", "created", "by", "revoked"]))
    return 0


async def reviewers_revoke(args, settings) -> int:
    reply = await _ask(
        args, settings, "reviewers.revoke", ReviewerRevoke(name=args.name, by=operator()), ReviewersReply
    )
    if args.json:
        emit_json(reply.model_dump(mode="json"))
    else:
        print(f"revoked {args.name}: its token no longer works")
    return 0


async def export(args, settings) -> int:
    body = ExportRequest(since=timestamp(args.since), until=timestamp(args.until))
    reply = await _ask(args, settings, "export", body, ExportReply, timeout=30.0)
    Path(args.out).write_bytes(reply.csv.encode())  # noqa: ASYNC240 (a CLI: nothing else runs)
    if args.json:
        emit_json({"rows": reply.rows, "out": args.out})
    else:
        print(f"wrote {reply.rows} audit row(s) to {args.out}")
    return 0


def add_parsers(sub, common) -> None:
    hitl = sub.add_parser("hitl", help="review queues, reviewers and the review audit").add_subparsers(
        dest="cmd", required=True
    )
    p = hitl.add_parser("queues", help="depth, oldest pending age, SLA state and owner of every queue")
    common(p)
    p.set_defaults(func=queues)
    p = hitl.add_parser("pending", help="pending reviews of a queue, oldest first")
    p.add_argument("--queue", required=True)
    p.add_argument("--limit", type=int, default=100)
    common(p)
    p.set_defaults(func=pending)
    p = hitl.add_parser("extend", help="move every pending deadline of a queue later (e.g. --by 30m)")
    p.add_argument("--queue", required=True)
    p.add_argument("--by", required=True, help="90s, 30m, 2h, 1d")
    p.add_argument("--reason", required=True, help="why (recorded in the audit)")
    common(p)
    p.set_defaults(func=extend)
    p = hitl.add_parser(
        "reassign", help="move a queue's pending reviews to another queue (its clock restarts)"
    )
    p.add_argument("--queue", required=True)
    p.add_argument("--to", required=True)
    p.add_argument("--reason", required=True, help="why (recorded in the audit)")
    common(p)
    p.set_defaults(func=reassign)
    p = hitl.add_parser("export", help="the review audit for [--from, --to) as RFC 4180 CSV")
    p.add_argument("--from", dest="since", required=True, help="ISO-8601, UTC unless it says otherwise")
    p.add_argument("--to", dest="until", required=True)
    p.add_argument("--out", required=True)
    common(p)
    p.set_defaults(func=export)
    reviewers = hitl.add_parser("reviewers", help="reviewer tokens").add_subparsers(
        dest="what", required=True
    )
    p = reviewers.add_parser("add", help="issue a token (shown once, stored hashed)")
    p.add_argument("name")
    p.add_argument("--queues", required=True, help="comma-separated queue names")
    common(p)
    p.set_defaults(func=reviewers_add)
    p = reviewers.add_parser("list", help="reviewers, their queues, and who issued or revoked them")
    common(p)
    p.set_defaults(func=reviewers_list)
    p = reviewers.add_parser("revoke", help="the reviewer's token stops working at once")
    p.add_argument("name")
    common(p)
    p.set_defaults(func=reviewers_revoke)

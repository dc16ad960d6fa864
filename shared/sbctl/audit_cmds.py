"""sbctl dead-letters: events the audit log could not hold, kept aside by the recorder."""

from __future__ import annotations

from datetime import UTC, datetime

from shared import names
from shared.bus import Bus
from shared.contracts import DeadLettersReply, DeadLettersRequest
from shared.sbctl.output import emit_json, fail, table
from switchboard_sdk import errors


async def dead_letters(args, settings) -> int:
    bus = await Bus.connect(settings.nats_url, env=args.env, service="sbctl")
    try:
        reply = await bus.request(
            names.recorder_dead_letters(args.env),
            DeadLettersRequest(limit=args.limit),
            DeadLettersReply,
            timeout=args.timeout,
        )
    except errors.SwitchboardError as exc:
        fail(f"the recorder did not answer: {exc.message}", code=exc.code, as_json=args.json)
    finally:
        await bus.drain(5)
    if reply.error:
        fail(reply.error.message, code=reply.error.code, as_json=args.json)
    if args.json:
        emit_json(reply.model_dump(mode="json"))
        return 0
    print(f"{reply.count} dead letter(s) in env {args.env}")
    rows = [
        {
            "time": datetime.fromtimestamp(d["failed_at"], UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "kind": d.get("kind"),
            "event_id": d.get("event_id"),
            "reason": (d.get("reason") or "")[:80],
        }
        for d in reply.dead_letters
    ]
    if rows:
        print(table(rows, ["time", "kind", "event_id", "reason"]))
    return 0

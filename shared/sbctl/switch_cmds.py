"""sbctl workflow pause|resume|status and sbctl agent pause|resume: the stop switches.

A pause refuses every new invocation of the workflow (or from the agent) on every gateway
replica within a second (`status: rejected`, code `workflow_paused` / `agent_paused`, with the
reason); invocations already running finish. Every change is recorded in the audit log."""

from __future__ import annotations

import time

from shared.contracts import Pause, Pauses
from shared.live_config import ConfigStore
from shared.sbctl.context import EXIT_FAILED, connect, operator, record_lever
from shared.sbctl.output import emit_json, fail, table
from shared.switches import SwitchStore

SCOPES = {"workflow": "workflows", "agent": "agents"}


async def pause(args, settings) -> int:
    return await _switch(args, settings, on=True)


async def resume(args, settings) -> int:
    return await _switch(args, settings, on=False)


async def _switch(args, settings, *, on: bool) -> int:
    scope, target = args.group, args.name
    who = operator(settings)
    bus = await connect(settings)
    try:
        if scope == "workflow" and on:
            current = await ConfigStore(bus.js, args.env).current()
            if current is not None and target not in current.policy["workflows"]:
                fail(
                    f"no workflow named {target!r} in policy version {current.version}",
                    code="not_found",
                    as_json=args.json,
                    exit_code=EXIT_FAILED,
                )
        changed = False

        def edit(pauses: Pauses) -> None:
            nonlocal changed
            held = getattr(pauses, SCOPES[scope])
            if on:
                changed = target not in held
                held[target] = Pause(reason=args.reason, by=who.name, at=time.time())
            else:
                changed = held.pop(target, None) is not None

        await SwitchStore(bus.js, args.env).change(edit)
        await record_lever(
            bus, who, f"{scope}.{'pause' if on else 'resume'}", target, args.reason or "", changed=changed
        )
    finally:
        await bus.drain(5)
    state = "paused" if on else "resumed"
    if args.json:
        emit_json({"ok": True, scope: target, "state": state, "changed": changed, "by": who.name})
    elif on:
        print(f"paused: {scope} {target} in env {args.env} by {who.name} ({args.reason})")
        print(f"every new invocation is refused with {scope}_paused; in-flight ones finish")
        print(f"undo: sbctl {scope} resume {target} --env {args.env}")
    else:
        print(
            f"resumed: {scope} {target} in env {args.env} by {who.name}"
            + ("" if changed else " (was not paused)")
        )
    return 0


async def status(args, settings) -> int:
    bus = await connect(settings)
    try:
        pauses, _ = await SwitchStore(bus.js, args.env).read()
        current = await ConfigStore(bus.js, args.env).current()
    finally:
        await bus.drain(5)
    known = sorted(current.policy["workflows"]) if current else []
    rows = []
    for name in sorted(set(known) | set(pauses.workflows)):
        rows.append(_row("workflow", name, pauses.workflows.get(name)))
    for name in sorted(pauses.agents):
        rows.append(_row("agent", name, pauses.agents[name]))
    if args.json:
        emit_json({"env": args.env, "config_version": current.version if current else None, "switches": rows})
        return 0
    print(f"env {args.env}, policy version {current.version if current else '-'}")
    print(table(rows, ["kind", "name", "state", "reason", "by", "since"]))
    return 0


def _row(kind: str, name: str, pause: Pause | None) -> dict:
    if pause is None:
        return {"kind": kind, "name": name, "state": "running"}
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pause.at))
    return {
        "kind": kind,
        "name": name,
        "state": "paused",
        "reason": pause.reason,
        "by": pause.by,
        "since": since,
    }

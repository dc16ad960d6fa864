"""sbctl config history|at|diff|rollback: questions about past policy, answered from the
PostgreSQL history of record, one command each."""

from __future__ import annotations

from datetime import UTC, datetime

import yaml

from shared import rollout
from shared.live_config import ConfigStore
from shared.sbctl import history, policy_diff
from shared.sbctl.config_cmds import distribute, print_rollout
from shared.sbctl.context import EXIT_FAILED, EXIT_USAGE, connect, operator
from shared.sbctl.output import emit_json, fail, table

HISTORY_COLUMNS = ["version", "applied_at", "by", "action", "reason", "checksum", "state"]


async def _synced(settings, env: str):
    """A history connection, with whatever KV holds that the history lacks imported first."""
    db = await history.open_db(settings.database_url)
    try:
        bus = await connect(settings)
        try:
            await history.reconcile(db, ConfigStore(bus.js, env))
        finally:
            await bus.drain(5)
    except BaseException:
        await db.close()
        raise
    return db


async def show_history(args, settings) -> int:
    db = await _synced(settings, args.env)
    try:
        rows = await history.versions(db, args.env)
    finally:
        await db.close()
    out = []
    for i, row in enumerate(rows):  # newest first; the one before is rows[i + 1]
        if args.workflow:
            before = rows[i + 1]["policy"] if i + 1 < len(rows) else None
            change = policy_diff.workflow_changed(before, row["policy"], args.workflow)
            if change is None:
                continue
            row = {**row, "workflow_change": change}
        out.append(row)
    out = out[: args.limit]
    if args.json:
        emit_json({"env": args.env, "workflow": args.workflow, "versions": [_public(r) for r in out]})
        return 0
    what = f" where workflow {args.workflow} changed" if args.workflow else ""
    print(f"env {args.env}: {len(out)} version(s){what}, newest first")
    columns = HISTORY_COLUMNS + (["workflow_change"] if args.workflow else [])
    print(table([_display(r) for r in out], columns))
    return 0


async def at(args, settings) -> int:
    when = parse_time(args.time, args.json)
    db = await _synced(settings, args.env)
    try:
        row, following = await history.live_at(db, args.env, when)
    finally:
        await db.close()
    if row is None:
        fail(
            f"no policy version was live in env {args.env} at {when.isoformat()}",
            code="not_found",
            as_json=args.json,
            exit_code=EXIT_FAILED,
        )
    spec = None
    if args.workflow:
        spec = policy_diff.effective(row["policy"], args.workflow)
        if spec is None:
            fail(
                f"workflow {args.workflow!r} did not exist in version {row['version']}",
                code="not_found",
                as_json=args.json,
                exit_code=EXIT_FAILED,
            )
    until = following["applied_at"] if following else None
    if args.json:
        emit_json(
            {
                "env": args.env,
                "at": when,
                "version": _public(row),
                "live_until": until,
                "workflow": args.workflow,
                "effective": spec,
            }
        )
        return 0
    r = _display(row)
    print(f"at {_when(when)} env {args.env} ran version {row['version']}")
    print(f"  live since {r['applied_at']} until {_when(until) if until else 'now'}")
    print(f"  applied by {row['applied_by']} ({row['by_source']}), {_action(row)}")
    print(f"  reason: {row['reason'] or '-'}")
    print(f"  checksum {row['checksum'][:12]}")
    if spec is not None:
        print(f"workflow {args.workflow}, effective policy:")
        print(_indent(yaml.safe_dump(spec, sort_keys=False)))
    return 0


async def diff(args, settings) -> int:
    db = await _synced(settings, args.env)
    try:
        a = await history.version(db, args.env, args.a)
        b = await history.version(db, args.env, args.b)
    finally:
        await db.close()
    missing = [n for n, row in ((args.a, a), (args.b, b)) if row is None]
    if missing:
        fail(
            f"env {args.env} has no version {missing[0]}",
            code="not_found",
            as_json=args.json,
            exit_code=EXIT_FAILED,
        )
    differences = policy_diff.diff(a["policy"], b["policy"])
    if args.json:
        emit_json(
            {
                "env": args.env,
                "from": args.a,
                "to": args.b,
                "differences": [d.__dict__ for d in differences],
            }
        )
        return 0
    print(f"env {args.env}: version {args.a} -> {args.b}, {len(differences)} difference(s)")
    for d in differences:
        print(f"  {d}")
    return 0


async def rollback(args, settings) -> int:
    who = operator(settings)
    db = await _synced(settings, args.env)
    try:
        target = await history.version(db, args.env, args.to)
        if target is None:
            fail(
                f"env {args.env} has no version {args.to}",
                code="not_found",
                as_json=args.json,
                exit_code=EXIT_FAILED,
            )
        bus = await connect(settings)
        try:
            change = history.Change(target["policy"], who, "rollback", args.reason, rollback_of=args.to)
            doc = await distribute(bus, db, ConfigStore(bus.js, args.env), change)
            rows = await rollout.wait(bus.js, args.env, doc.version, args.wait)
        finally:
            await bus.drain(5)
    finally:
        await db.close()
    if not args.json:
        print(
            f"rolled back: version {doc.version} of env {args.env} has the content of version {args.to}"
            f" (checksum {doc.checksum[:12]})"
        )
    return print_rollout(args, doc, rows, {"rollback_of": args.to})


def parse_time(text: str, as_json: bool) -> datetime:
    """ISO 8601; a time without a zone is UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        fail(
            f"not a time: {text!r} (use ISO 8601, e.g. 2026-11-24T14:37, UTC unless a zone is given)",
            code="invalid_request",
            as_json=as_json,
            exit_code=EXIT_USAGE,
        )
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "env"}


def _display(row: dict) -> dict:
    return {
        **row,
        "applied_at": _when(row["applied_at"]),
        "by": f"{row['applied_by']} ({row['by_source']})",
        "action": _action(row),
        "checksum": row["checksum"][:12],
    }


def _action(row: dict) -> str:
    action = row["action"]
    if row.get("rollback_of") is not None:
        action += f" to {row['rollback_of']}"
    if row.get("promoted_from_env"):
        action += f" from {row['promoted_from_env']} v{row['promoted_from_version']}"
    if row.get("forced"):
        action += " (forced past protection)"
    return action


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip().splitlines())

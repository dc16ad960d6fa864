"""sbctl config: validate policy files, apply them as a live version, show what runs."""

from __future__ import annotations

import os

import asyncpg

from shared import errors
from shared.bus import Bus
from shared.contracts import ConfigEvent
from shared.live_config import ConfigStore, VersionConflict, VersionDoc
from shared.policy import document_checksum, load_dir
from shared.sbctl import history
from shared.sbctl.context import connect, operator
from shared.sbctl.output import emit_json, fail


def validate(args) -> int:
    result = load_dir(args.dir)
    if args.json:
        emit_json(
            {
                "ok": result.ok,
                "files": result.files,
                "errors": [p.__dict__ for p in result.problems],
                "warnings": result.warnings,
            }
        )
    else:
        for p in result.problems:
            print(f"error: {p}")
        for w in result.warnings:
            print(f"warning: {w}")
        if result.ok:
            policy = result.policy
            print(
                f"ok: {len(policy.providers)} providers, {len(policy.workflows)} workflows "
                f"in {len(result.files)} files (checksum {policy.checksum()[:12]})"
            )
    return 0 if result.ok else 1


async def apply(args, settings) -> int:
    result = load_dir(args.dir)
    if not result.ok:
        if not args.json:
            for p in result.problems:
                print(f"error: {p}")
        fail(
            f"{len(result.problems)} problem(s) in {args.dir}; nothing applied",
            code="invalid_policy",
            as_json=args.json,
        )
    source = os.path.abspath(args.dir)  # noqa: ASYNC240 - a path string, no I/O
    who = operator(settings)
    db = await history.open_db(settings.database_url)
    try:
        bus = await connect(settings)
        try:
            store = ConfigStore(bus.js, args.env)
            current = await store.current()
            checksum = document_checksum(result.document)
            if current is not None and current.checksum == checksum and not args.force:
                out = {
                    "ok": True,
                    "applied": False,
                    "version": current.version,
                    "message": "identical to the active version; nothing applied (use --force)",
                }
                if args.json:
                    emit_json(out)
                else:
                    print(f"unchanged: version {current.version} is identical")
                return 0
            change = history.Change(result.document, who, "apply", args.reason, source=source)
            doc = await distribute(bus, db, store, change)
        finally:
            await bus.drain(5)
    finally:
        await db.close()
    if args.json:
        emit_json(
            {
                "ok": True,
                "applied": True,
                "version": doc.version,
                "checksum": doc.checksum,
                "warnings": result.warnings,
            }
        )
    else:
        for w in result.warnings:
            print(f"warning: {w}")
        print(f"applied: version {doc.version} to env {args.env} (checksum {doc.checksum[:12]})")
    return 0


async def distribute(bus: Bus, db, store: ConfigStore, change: history.Change) -> VersionDoc:
    """Record the change in the history of record, then distribute it, then tell the audit log.
    If the history cannot be written nothing is distributed (`Unavailable`)."""
    try:
        doc = await history.publish(db, store, change)
    except (asyncpg.PostgresError, OSError) as exc:
        raise errors.Unavailable(
            f"the policy history could not be written ({type(exc).__name__}); nothing applied"
        ) from exc
    except VersionConflict as exc:
        raise errors.SwitchboardError(f"{exc}; nothing applied, try again") from exc
    await bus.ensure_events_stream()
    await bus.emit(
        ConfigEvent(
            action="applied",
            version=doc.version,
            applied_at=doc.applied_at,
            applied_by=doc.applied_by,
            by_source=change.who.source,
            change=change.action,
            reason=change.reason,
            forced=change.forced,
            checksum=doc.checksum,
            source=doc.source,
            policy=doc.policy,
            config_version=str(doc.version),
        )
    )
    return doc


async def show(args, settings) -> int:
    bus = await connect(settings)
    try:
        current = await ConfigStore(bus.js, args.env).current()
    finally:
        await bus.drain(5)
    if current is None:
        fail(f"no policy version has been applied to env {args.env}", code="not_found", as_json=args.json)
    if args.json:
        emit_json(current.model_dump(mode="json"))
    else:
        print(f"version {current.version} applied by {current.applied_by} (checksum {current.checksum[:12]})")
        for name, wf in current.policy["workflows"].items():
            chain = " -> ".join(f"{t['provider']}/{t['model']}" for t in wf["tiers"])
            print(f"  {name}: {chain}")
    return 0

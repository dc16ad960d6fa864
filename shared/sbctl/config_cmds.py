"""sbctl config: validate policy files, apply them as a live version, show what runs."""

from __future__ import annotations

import os
import time

import asyncpg

from shared import rollout
from shared.bus import Bus
from shared.contracts import ConfigEvent
from shared.live_config import ConfigStore, VersionConflict, VersionDoc
from shared.policy import document_checksum, load_dir
from shared.rollout import ReplicaState
from shared.sbctl import history
from shared.sbctl.context import EXIT_FAILED, EXIT_OK, connect, operator
from shared.sbctl.output import emit_json, fail, table
from switchboard_sdk import errors


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
        forced = await history.guard(db, args.env, args.force)
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
            change = history.Change(result.document, who, "apply", args.reason, source=source, forced=forced)
            doc = await distribute(bus, db, store, change)
            rows = await rollout.wait(bus.js, args.env, doc.version, args.wait)
        finally:
            await bus.drain(5)
    finally:
        await db.close()
    if not args.json:
        for w in result.warnings:
            print(f"warning: {w}")
        print(f"applied: version {doc.version} to env {args.env} (checksum {doc.checksum[:12]})")
    return print_rollout(args, doc, rows, {"applied": True, "warnings": result.warnings})


def print_rollout(args, doc: VersionDoc, rows, extra: dict) -> int:
    """The rollout table of `doc`; non-zero when a live replica rejected it or stayed silent."""
    counted = [s for _, s in rows if s is not ReplicaState.STALE]
    ok = all(s is ReplicaState.OK for s in counted)
    if args.json:
        emit_json(
            {
                "ok": ok,
                "version": doc.version,
                "checksum": doc.checksum,
                **extra,
                "rollout": [rollout_row(r, s) for r, s in rows],
            }
        )
        return EXIT_OK if ok else EXIT_FAILED
    if rows:
        print(
            table([rollout_row(r, s) for r, s in rows], ["service", "replica", "version", "state", "detail"])
        )
    if not counted:
        print("rollout: no live replica has reported (none running in this environment?)")
    elif ok:
        print(f"rollout: all {len(counted)} live replica(s) run version {doc.version}")
    else:
        bad = [s for s in counted if s is not ReplicaState.OK]
        print(f"rollout: FAILED, {len(bad)} of {len(counted)} live replica(s) rejected it or stayed silent")
    return EXIT_OK if ok else EXIT_FAILED


def rollout_row(report, state: ReplicaState) -> dict:
    age = time.time() - report.reported_at
    if state is ReplicaState.REJECTED:
        detail = report.error or "rejected"
    elif state is ReplicaState.STALE:
        detail = f"last report {age:.0f}s ago (gone?), ran {report.config_version}"
    elif state is ReplicaState.SILENT:
        detail = f"still runs {report.config_version}"
    else:
        detail = ""
    return {
        "service": report.service,
        "replica": report.replica,
        "version": report.config_version,
        "state": state.value,
        "detail": detail,
    }


async def status(args, settings) -> int:
    bus = await connect(settings)
    try:
        current = await ConfigStore(bus.js, args.env).current()
        if current is None:
            fail(f"no policy version has been applied to env {args.env}", code="not_found", as_json=args.json)
        rows = await rollout.wait(bus.js, args.env, current.version, 0)
    finally:
        await bus.drain(5)
    if not args.json:
        print(f"env {args.env}: version {current.version} applied by {current.applied_by}")
    return print_rollout(args, current, rows, {})


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
            for i, t in enumerate(wf["tiers"]):
                slo = t.get("slo_p99_ms")
                print(
                    f"    tier {i}  {t['provider']}/{t['model']}  timeout {t.get('timeout_ms', 30000)} ms"
                    f"  slo_p99 {f'{slo} ms' if slo else '-'}"
                )
    return 0

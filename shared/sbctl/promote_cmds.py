"""sbctl config promote and sbctl config protect: staging before production.

`promote --from staging --to prod` publishes exactly the document that runs in staging (same
checksum) as prod's next version, and refuses unless it has run in staging for the target's
soak time and every live staging replica acknowledged it. A protected environment refuses a
direct `apply` unless `--force` is given (always with `--reason`); the override is recorded in
the history."""

from __future__ import annotations

import time

from shared import names, rollout
from shared.live_config import ConfigStore
from shared.rollout import ReplicaState
from shared.sbctl import history
from shared.sbctl.config_cmds import distribute, print_rollout
from shared.sbctl.context import EXIT_USAGE, connect, operator, record_lever
from shared.sbctl.output import emit_json, fail
from switchboard_sdk import errors


async def protect(args, settings) -> int:
    who = operator(settings)
    db = await history.open_db(settings.database_url)
    try:
        current = await history.env_settings(db, args.env)
        soak_s = args.soak if args.soak is not None else current["soak_s"]
        await history.set_env(
            db, args.env, protected=not args.off, soak_s=soak_s, who=who, reason=args.reason
        )
    finally:
        await db.close()
    bus = await connect(settings)
    try:
        lever = "env.unprotect" if args.off else "env.protect"
        await record_lever(bus, who, lever, args.env, f"{args.reason} (soak {soak_s}s)")
    finally:
        await bus.drain(5)
    state = "unprotected" if args.off else "protected"
    if args.json:
        emit_json({"ok": True, "env": args.env, "protected": not args.off, "soak_s": soak_s, "by": who.name})
    else:
        print(f"env {args.env} is {state}; a version must run {soak_s}s where it is promoted from")
    return 0


async def promote(args, settings) -> int:
    if args.source == args.target:
        fail(
            "--from and --to name the same environment",
            code="invalid_request",
            as_json=args.json,
            exit_code=EXIT_USAGE,
        )
    for env in (args.source, args.target):
        names.check_env(env)
    who = operator(settings)
    target_settings = settings.model_copy(update={"env": args.target})
    db = await history.open_db(settings.database_url)
    try:
        bus = await connect(target_settings)
        try:
            await history.reconcile(db, ConfigStore(bus.js, args.source))
            row = await history.live(db, args.source)
            if row is None:
                raise errors.Refused(f"nothing runs in {args.source}: no version to promote")
            rules = await history.env_settings(db, args.target)
            ran_s = time.time() - row["applied_at"].timestamp()
            if ran_s < rules["soak_s"]:
                raise errors.Refused(
                    f"version {row['version']} has run in {args.source} for {ran_s:.0f}s;"
                    f" {args.target} requires {rules['soak_s']}s of soak"
                )
            await _acknowledged(bus, args.source, row["version"])
            change = history.Change(
                row["policy"],
                who,
                "promote",
                args.reason,
                source=row["source"],
                promoted_from_env=args.source,
                promoted_from_version=row["version"],
            )
            doc = await distribute(bus, db, ConfigStore(bus.js, args.target), change)
            assert doc.checksum == row["checksum"], "promotion changed the content"
            rows = await rollout.wait(bus.js, args.target, doc.version, args.wait)
        finally:
            await bus.drain(5)
    finally:
        await db.close()
    args.env = args.target
    if not args.json:
        print(
            f"promoted: version {row['version']} of {args.source} is version {doc.version} of {args.target}"
            f" (checksum {doc.checksum[:12]}, same content)"
        )
    return print_rollout(
        args, doc, rows, {"promoted_from_env": args.source, "promoted_from_version": row["version"]}
    )


async def _acknowledged(bus, env: str, version: int) -> None:
    """Refuse unless every live replica of `env` runs `version` (and at least one does)."""
    now = time.time()
    states = [rollout.state(r, version, now) for r in await rollout.reports(bus.js, env)]
    live = [s for s in states if s is not ReplicaState.STALE]
    if not live:
        raise errors.Refused(f"no live replica in {env} has acknowledged version {version}")
    bad = [s for s in live if s is not ReplicaState.OK]
    if bad:
        raise errors.Refused(
            f"{len(bad)} of {len(live)} live replica(s) in {env} did not acknowledge version {version}"
            f" (see sbctl config status --env {env})"
        )

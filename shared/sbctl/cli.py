"""sbctl entry point: argument parsing and dispatch. Each command lives in its own module."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import sys
from importlib import metadata

from shared import names
from shared.contracts import PROBE_MAX_COUNT
from shared.sbctl import (
    audit_cmds,
    budget_cmds,
    config_cmds,
    drill_cmds,
    history_cmds,
    hitl_cmds,
    ingress_cmds,
    invoke_cmds,
    promote_cmds,
    provider_cmds,
    stats_cmds,
    status_cmds,
    switch_cmds,
)
from shared.sbctl.context import EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE, OptionRefused, SbctlSettings
from shared.sbctl.output import fail
from shared.telemetry.tracing import setup_tracing
from switchboard_sdk import errors

EPILOG = """exit codes: 0 ok; 1 a check failed or the request was refused; 2 usage error;
3 NATS, PostgreSQL or a service unreachable. --env, --json and --nats-url may be given
anywhere on the line. The operator is $SB_OPERATOR (else the login user@host)."""


def _common(p: argparse.ArgumentParser, *, root: bool = False) -> None:
    """The options every command takes, accepted anywhere on the line: the root parser holds the
    defaults, each subcommand repeats them without one so that it does not undo an earlier value."""
    default = (lambda value: value) if root else (lambda _: argparse.SUPPRESS)
    p.add_argument(
        "--env",
        default=default(os.environ.get("SB_ENV", "dev")),
        help="environment (default: $SB_ENV or dev)",
    )
    p.add_argument("--json", action="store_true", default=default(False), help="machine-readable output")
    p.add_argument(
        "--nats-url",
        default=default(None),
        help="NATS server (default: $SB_NATS_URL or nats://127.0.0.1:4222)",
    )


def _group(sub, name: str, help: str):
    p = sub.add_parser(name, help=help)
    _common(p)
    return p.add_subparsers(dest="cmd", required=True)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="sbctl", description="Operate Switchboard.", epilog=EPILOG)
    root.add_argument("--version", action="version", version=f"sbctl {_version()}")
    _common(root, root=True)
    sub = root.add_subparsers(dest="group", required=True)

    config = _group(sub, "config", "policy files and live versions")
    p = config.add_parser("validate", help="check policy files; every error names its file and path")
    p.add_argument("dir", nargs="?", default="config")
    _common(p)
    p.set_defaults(func=config_cmds.validate)
    p = config.add_parser("apply", help="publish the files as the next live version")
    p.add_argument("dir", nargs="?", default="config")
    p.add_argument("--reason", required=True, help="why: kept in the history of record")
    p.add_argument(
        "--force",
        action="store_true",
        help="apply even if identical to the active version, or to a protected env (recorded)",
    )
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for every replica (default 10)")
    _common(p)
    p.set_defaults(func=config_cmds.apply)
    p = config.add_parser("promote", help="publish what runs in one env as the next version of another")
    p.add_argument("--from", dest="source", required=True, help="e.g. staging")
    p.add_argument("--to", dest="target", required=True, help="e.g. prod")
    p.add_argument("--reason", required=True)
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for every replica (default 10)")
    _common(p)
    p.set_defaults(func=promote_cmds.promote)
    p = config.add_parser("protect", help="refuse direct applies to an env; set its soak requirement")
    p.add_argument("--off", action="store_true", help="remove the protection")
    p.add_argument("--soak", type=int, help="seconds a version must run where it is promoted from")
    p.add_argument("--reason", required=True)
    _common(p)
    p.set_defaults(func=promote_cmds.protect)
    p = config.add_parser("status", help="which version every replica runs, or why it rejected it")
    _common(p)
    p.set_defaults(func=config_cmds.status)
    p = config.add_parser("show", help="the active version")
    _common(p)
    p.set_defaults(func=config_cmds.show)
    p = config.add_parser("history", help="every version: who, when, why (newest first)")
    p.add_argument("--workflow", help="only the versions that changed this workflow")
    p.add_argument("--limit", type=int)
    _common(p)
    p.set_defaults(func=history_cmds.show_history)
    p = config.add_parser("at", help="the version that was live at a time, and a workflow's policy then")
    p.add_argument("time", help="ISO 8601, e.g. 2026-11-24T14:37 (UTC unless a zone is given)")
    p.add_argument("--workflow")
    _common(p)
    p.set_defaults(func=history_cmds.at)
    p = config.add_parser("diff", help="what changed between two versions, per provider and workflow")
    p.add_argument("a", type=int)
    p.add_argument("b", type=int)
    _common(p)
    p.set_defaults(func=history_cmds.diff)
    p = config.add_parser("rollback", help="a new version with the content of an earlier one")
    p.add_argument("--to", type=int, required=True, help="the version whose content comes back")
    p.add_argument("--reason", required=True)
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for every replica (default 10)")
    _common(p)
    p.set_defaults(func=history_cmds.rollback)

    p = sub.add_parser("invoke", help="send one invocation through the gateway")
    p.add_argument("workflow")
    p.add_argument("text")
    p.add_argument("--session")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument(
        "--wait-for-review", type=float, metavar="SECONDS", help="if held for review, wait for the decision"
    )
    _common(p)
    p.set_defaults(func=invoke_cmds.invoke)

    provider = _group(sub, "provider", "provider health and the block lever")
    p = provider.add_parser("status", help="blocks, circuits, cooldowns and quota use per provider/model")
    p.add_argument("--provider")
    _common(p)
    p.set_defaults(func=provider_cmds.status)
    p = provider.add_parser("block", help="route around a provider at once (every replica)")
    p.add_argument("provider")
    p.add_argument("--reason", default="blocked by operator")
    _common(p)
    p.set_defaults(func=provider_cmds.block)
    p = provider.add_parser("unblock", help="let a blocked provider take traffic again")
    p.add_argument("provider")
    _common(p)
    p.set_defaults(func=provider_cmds.unblock)
    p = provider.add_parser(
        "probe", help="a few real calls to a (blocked) provider: recorded, charged to no budget"
    )
    p.add_argument("provider")
    p.add_argument("--count", type=int, default=3, choices=range(1, PROBE_MAX_COUNT + 1), metavar="N")
    p.add_argument("--model", help="default: the provider's first model in the policy")
    p.add_argument("--timeout", type=float, default=10.0, help="per call, seconds (default 10)")
    p.add_argument("--reason", default="probe before unblocking", help="kept with the probes")
    _common(p)
    p.set_defaults(func=provider_cmds.probe)

    p = sub.add_parser("quotas", help="quota use and headroom this minute")
    _common(p)
    p.set_defaults(func=provider_cmds.quotas)

    drill = _group(sub, "drill", "exercise failure paths for real")
    p = drill.add_parser(
        "provider-outage", help="drive a provider's workflows around it (blocks nothing), judge the fallback"
    )
    p.add_argument("--provider", required=True)
    p.add_argument("--invocations", type=int, default=20, help="per workflow")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout", type=float, default=30.0, help="per invocation, seconds")
    p.add_argument("--min-completion", type=float, default=1.0, help="fraction that must complete")
    p.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the audit log")
    _common(p)
    p.set_defaults(func=drill_cmds.provider_outage)

    p = sub.add_parser(
        "status", help="every service replica: version, uptime, requests and errors per endpoint"
    )
    p.add_argument("--wait", type=float, default=1.0, help="seconds to collect answers")
    _common(p)
    p.set_defaults(func=status_cmds.status)

    p = sub.add_parser("trace", help="an invocation as recorded in the audit log")
    p.add_argument("invocation_id")
    p.add_argument("--timeout", type=float, default=5.0)
    _common(p)
    p.set_defaults(func=invoke_cmds.trace)

    p = sub.add_parser("stats", help="per workflow: status mix, latency, tokens, spend, fallbacks, breaches")
    p.add_argument("--since", type=stats_cmds.duration, default="1h", help="window, e.g. 30m, 1h, 7d")
    p.add_argument("--workflow")
    p.add_argument(
        "--by",
        choices=("workflow", "agent"),
        default="workflow",
        help="agent: per agent and workflow, its sessions, spend and requested max_tokens",
    )
    p.add_argument("--timeout", type=float, default=30.0)
    _common(p)
    p.set_defaults(func=stats_cmds.stats)
    p = sub.add_parser("latency", help="per workflow: latency of the last minutes against the time before")
    p.add_argument("--last", type=stats_cmds.duration, default="15m", help="recent window (default 15m)")
    p.add_argument(
        "--before", type=stats_cmds.duration, default="1h", help="the window before it (default 1h)"
    )
    p.add_argument("--workflow")
    p.add_argument("--timeout", type=float, default=30.0)
    _common(p)
    p.set_defaults(func=stats_cmds.latency)
    p = sub.add_parser("invocations", help="the newest recorded invocations, filtered")
    p.add_argument("--since", type=stats_cmds.duration, default="1h", help="window, e.g. 30m, 1h, 7d")
    p.add_argument("--workflow")
    p.add_argument("--status")
    p.add_argument("--agent")
    p.add_argument("--limit", type=stats_cmds.limit, default=50)
    p.add_argument("--timeout", type=float, default=30.0)
    _common(p)
    p.set_defaults(func=stats_cmds.invocations)
    p = sub.add_parser("dead-letters", help="events the audit log could not hold, with the reason")
    p.add_argument("--limit", type=int, default=20, help="how many of the newest to show")
    p.add_argument("--timeout", type=float, default=5.0)
    _common(p)
    p.set_defaults(func=audit_cmds.dead_letters)

    budget = _group(sub, "budget", "budget ceilings and usage")
    p = budget.add_parser("show", help="ceilings, window usage, reservations in flight, spend today")
    p.add_argument("--workflow", required=True)
    p.add_argument("--session", help="also the session's rolling window")
    p.add_argument("--timeout", type=float, default=5.0)
    _common(p)
    p.set_defaults(func=budget_cmds.show)

    for scope, what in (
        ("workflow", "every invocation of a workflow"),
        ("agent", "every invocation from an agent"),
    ):
        group = _group(sub, scope, f"the stop switch for {what}")
        p = group.add_parser("pause", help=f"refuse {what} on every replica within a second")
        p.add_argument("name")
        p.add_argument("--reason", required=True)
        _common(p)
        p.set_defaults(func=switch_cmds.pause)
        p = group.add_parser("resume", help="take new invocations again")
        p.add_argument("name")
        p.add_argument("--reason", default="")
        _common(p)
        p.set_defaults(func=switch_cmds.resume)
        p = group.add_parser("status", help="which workflows and agents are paused, by whom and why")
        _common(p)
        p.set_defaults(func=switch_cmds.status)

    hitl_cmds.add_parsers(sub, _common)
    ingress_cmds.add_parsers(sub, _common)
    return root


def _version() -> str:
    try:
        return metadata.version("switchboard")
    except metadata.PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        names.check_env(args.env)
    except ValueError as exc:
        sys.stderr.write(f"error [invalid_env]: {exc}\n")
        raise SystemExit(EXIT_USAGE) from None
    # Connection retries and the like are the library's business; the operator gets one line.
    logging.getLogger("switchboard").setLevel(logging.ERROR)
    overrides = {"env": args.env} | ({"nats_url": args.nats_url} if args.nats_url else {})
    settings = SbctlSettings(**overrides)
    setup_tracing("sbctl", args.env)  # the SDK's span of `sbctl invoke` starts the trace
    func = args.func
    try:
        code = asyncio.run(func(args, settings)) if inspect.iscoroutinefunction(func) else func(args)
    except errors.Unavailable as exc:  # NATS or PostgreSQL unreachable: a coded error, not a traceback
        fail(exc.message, code=exc.code, as_json=args.json, exit_code=EXIT_UNAVAILABLE)
    except OptionRefused as exc:
        fail(exc.message, code=exc.code, as_json=args.json, exit_code=EXIT_USAGE)
    except errors.SwitchboardError as exc:
        fail(exc.message, code=exc.code, as_json=args.json, exit_code=EXIT_FAILED)
    raise SystemExit(code)

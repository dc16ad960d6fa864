"""sbctl entry point: argument parsing and dispatch. Each command lives in its own module."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import sys

from shared import names
from shared.sbctl import config_cmds, invoke_cmds
from shared.settings import Settings


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--env", default=os.environ.get("SB_ENV", "dev"), help="environment (default: $SB_ENV or dev)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="sbctl", description="Operate Switchboard.")
    sub = root.add_subparsers(dest="group", required=True)

    config = sub.add_parser("config", help="policy files and live versions").add_subparsers(
        dest="cmd", required=True
    )
    p = config.add_parser("validate", help="check policy files; every error names its file and path")
    p.add_argument("dir", nargs="?", default="config")
    _common(p)
    p.set_defaults(func=config_cmds.validate)
    p = config.add_parser("apply", help="publish the files as the next live version")
    p.add_argument("dir", nargs="?", default="config")
    p.add_argument("--by", help="who applies it (default: user@host)")
    p.add_argument("--force", action="store_true", help="apply even if identical to the active version")
    _common(p)
    p.set_defaults(func=config_cmds.apply)
    p = config.add_parser("show", help="the active version")
    _common(p)
    p.set_defaults(func=config_cmds.show)

    p = sub.add_parser("invoke", help="send one invocation through the gateway")
    p.add_argument("workflow")
    p.add_argument("text")
    p.add_argument("--session")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--timeout", type=float, default=60.0)
    _common(p)
    p.set_defaults(func=invoke_cmds.invoke)

    p = sub.add_parser("trace", help="an invocation as recorded in the audit log")
    p.add_argument("invocation_id")
    p.add_argument("--timeout", type=float, default=5.0)
    _common(p)
    p.set_defaults(func=invoke_cmds.trace)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        names.check_env(args.env)
    except ValueError as exc:
        sys.stderr.write(f"error [invalid_env]: {exc}\n")
        raise SystemExit(2) from None
    settings = Settings(env=args.env)
    func = args.func
    code = asyncio.run(func(args, settings)) if inspect.iscoroutinefunction(func) else func(args)
    raise SystemExit(code)

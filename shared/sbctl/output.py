"""Printing for sbctl: JSON for scripts, aligned text for people."""

from __future__ import annotations

import sys

import orjson


def emit_json(data: object) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max([len(c)] + [len(_cell(r.get(c))) for r in rows]) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(_cell(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def fail(message: str, *, code: str, as_json: bool, exit_code: int = 1) -> None:
    if as_json:
        emit_json({"ok": False, "error": {"code": code, "message": message}})
    else:
        sys.stderr.write(f"error [{code}]: {message}\n")
    raise SystemExit(exit_code)

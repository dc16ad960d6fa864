"""The review audit trail as RFC 4180 CSV: a header row, CRLF line ends, every field quoted where
it must be (commas, quotes, newlines), timestamps in UTC ISO-8601."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import orjson

COLUMNS = (
    "event_at",
    "event",
    "review_id",
    "invocation_id",
    "workflow",
    "agent",
    "stage",
    "rule",
    "matched",
    "config_version",
    "queue",
    "owner",
    "sla_deadline",
    "deadline",
    "requested_at",
    "claimed_at",
    "decided_at",
    "acted_at",
    "actor",
    "actor_kind",
    "decision",
    "reason",
    "action",
    "outcome",
    "prompt",
)


def iso(ts: datetime | None) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z") if ts is not None else ""


def _prompt(request) -> str:
    doc = orjson.loads(request) if isinstance(request, str | bytes) else request
    return "\n\n".join(m["content"] for m in doc.get("messages", []) if m.get("role") != "system")


def to_csv(rows) -> str:
    out = io.StringIO()
    writer = csv.writer(out, dialect="excel", lineterminator="\r\n")  # RFC 4180
    writer.writerow(COLUMNS)
    for r in rows:
        matched = r["matched"]
        writer.writerow(
            [
                iso(r["ts"]),
                r["event"],
                r["review_id"],
                r["invocation_id"],
                r["workflow"],
                r["agent"] or "",
                r["stage"],
                r["rule"],
                matched if isinstance(matched, str) else orjson.dumps(matched).decode(),
                r["config_version"] or "",
                r["queue"],
                r["owner"],
                iso(r["sla_deadline"]),
                iso(r["deadline"]),
                iso(r["requested_at"]),
                iso(r["claimed_at"]),
                iso(r["decided_at"]),
                iso(r["acted_at"]),
                r["actor"],
                r["actor_kind"],
                r["decision"] or "",
                r["reason"] or "",
                r["action"] or "",
                r["outcome"] or "",
                _prompt(r["request"]),
            ]
        )
    return out.getvalue()

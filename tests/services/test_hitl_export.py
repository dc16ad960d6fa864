"""The audit trail as CSV (through the API and `sbctl hitl export`), read back with the `csv` module,
every column checked, with a prompt holding commas, quotes and newlines; and the reviewer API's
served OpenAPI fuzzed by schemathesis with no 5xx."""

from __future__ import annotations

import asyncio
import csv
import io
import sys
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.hitl.export import COLUMNS
from shared.contracts import Status
from tests.support.helpers import infra_env, run_sbctl
from tests.support.hitl import REFUND, add_reviewer, api, results, reviews, wait_all_acted
from tests.support.stack import REPO

pytestmark = pytest.mark.timeout(120)
PROMPT = 'Refund "order 7", please,\nand say: "sorry, truly".\r\nThanks'


def parse(text: str) -> list[dict]:
    assert text.startswith(",".join(COLUMNS) + "\r\n")  # header row, CRLF line ends
    return list(csv.DictReader(io.StringIO(text, newline="")))


def is_utc(value: str) -> bool:
    return value.endswith("Z") and datetime.fromisoformat(value).utcoffset() == timedelta(0)


async def test_csv_round_trip_through_the_api_and_sbctl(stack, tmp_path):
    await stack.start()
    sb = await stack.client(agent="refund-bot")
    token = await add_reviewer(stack, "alice", "payments")
    since = datetime.now(UTC) - timedelta(seconds=5)
    approved = await sb.invoke("refunds", PROMPT, metadata=REFUND)
    rejected = await sb.invoke("refunds", "Refund 8.", metadata=REFUND)
    async with results(stack) as published, api(stack, token) as http:
        await http.post(f"/v1/reviews/{approved.review_id}/claim")
        await http.post(f"/v1/reviews/{approved.review_id}/approve", json={})
        await http.post(f"/v1/reviews/{rejected.review_id}/reject", json={"reason": 'too "big", sorry'})
        await published.wait(approved.invocation_id)
        await published.wait(rejected.invocation_id)
        await wait_all_acted(stack, [approved.invocation_id, rejected.invocation_id])
        until = datetime.now(UTC) + timedelta(seconds=5)
        response = await http.get(
            "/v1/audit.csv", params={"since": since.isoformat(), "until": until.isoformat()}
        )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    out = tmp_path / "audit.csv"
    code, stdout, stderr = await run_sbctl(
        stack.infra,
        "hitl",
        "export",
        "--from",
        since.isoformat(),
        "--to",
        until.isoformat(),
        "--out",
        str(out),
        "--env",
        stack.env,
    )
    assert code == 0, stdout + stderr
    assert out.read_bytes() == response.content  # one format, whichever way it is fetched

    rows = parse(response.text)
    [review] = await reviews(stack, approved.invocation_id)
    mine = [r for r in rows if r["invocation_id"] == approved.invocation_id]
    assert [r["event"] for r in mine] == ["requested", "claimed", "decided", "acted"]
    for r in mine:
        assert r["prompt"] == PROMPT
        assert (r["review_id"], r["workflow"], r["agent"], r["stage"]) == (
            approved.review_id,
            "refunds",
            "refund-bot",
            "pre",
        )
        assert (r["rule"], r["queue"], r["owner"]) == ("large-refund", "payments", "payments-ops")
        assert orjson.loads(r["matched"]) == {"workflow": "refunds", "metadata.amount": 900}
        assert r["config_version"] == approved.config_version
        for column in (
            "event_at",
            "sla_deadline",
            "deadline",
            "requested_at",
            "claimed_at",
            "decided_at",
            "acted_at",
        ):
            assert is_utc(r[column]), (column, r[column])
        assert datetime.fromisoformat(r["requested_at"]) == review["requested_at"]
        assert datetime.fromisoformat(r["decided_at"]) == review["decided_at"]
    requested, claimed, decided, acted = mine
    assert (requested["actor"], requested["actor_kind"], requested["action"]) == (
        "gateway",
        "system",
        "held (pre)",
    )
    assert (claimed["actor"], claimed["actor_kind"]) == ("alice", "human")
    assert (decided["actor"], decided["decision"], decided["reason"]) == ("alice", "approved", "")
    assert (acted["action"], acted["outcome"]) == ("sent to the model", "success")
    [no] = [r for r in rows if r["invocation_id"] == rejected.invocation_id and r["event"] == "decided"]
    assert (no["decision"], no["reason"]) == ("rejected", 'too "big", sorry')
    assert [r["event"] for r in rows if r["invocation_id"] == rejected.invocation_id][-1] == "acted"


async def test_export_range_is_half_open_and_other_queues_are_not_shown(stack):
    await stack.start()
    sb = await stack.client()
    held = await sb.invoke("refunds", "Refund 9.", metadata=REFUND)
    assert held.status is Status.PENDING_REVIEW
    outsider = await add_reviewer(stack, "lee", "payments-leads")
    insider = await add_reviewer(stack, "alice", "payments")
    now = datetime.now(UTC)
    window = {
        "since": (now - timedelta(minutes=1)).isoformat(),
        "until": (now + timedelta(minutes=1)).isoformat(),
    }
    before = {
        "since": (now - timedelta(minutes=2)).isoformat(),
        "until": (now - timedelta(minutes=1)).isoformat(),
    }
    async with api(stack, outsider) as http:
        assert parse((await http.get("/v1/audit.csv", params=window)).text) == []
    async with api(stack, insider) as http:
        assert len(parse((await http.get("/v1/audit.csv", params=window)).text)) == 1
        assert parse((await http.get("/v1/audit.csv", params=before)).text) == []


@pytest.mark.timeout(240)  # schemathesis generates and sends every example: CPU-bound on a busy machine
async def test_schemathesis_finds_no_server_error_in_the_served_openapi(stack, tmp_path):
    await stack.start("hitl")
    token = await add_reviewer(stack, "alice", "payments")
    port = stack["hitl"].api_port
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"http://127.0.0.1:{port}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        "30",
        "--seed",
        "4181",
        "--report-dir",
        str(tmp_path),
        cwd=REPO,
        env=infra_env(stack.infra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 220)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "No issues found" in text or "passed" in text, text

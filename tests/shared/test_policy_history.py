"""The policy history of record: written to PostgreSQL before a version reaches NATS KV, apply
refused when it cannot be written, and the questions asked of it (history, at, diff, rollback)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import asyncpg
import nats
import pytest

from shared import names
from shared.live_config import ConfigStore, read_version
from shared.policy import document_checksum, load_dir
from tests.support.helpers import run_sbctl
from tests.support.stack import wait_for

pytestmark = pytest.mark.timeout(90)
ALICE = {"SB_OPERATOR": "alice"}


async def sbctl(stack, *args: str, operator: dict | None = None) -> tuple[int, str, str]:
    return await run_sbctl(stack.infra, *args, "--env", stack.env, extra_env=operator or ALICE)


async def apply(stack, reason: str) -> dict:
    code, out, err = await sbctl(
        stack, "config", "apply", str(stack.policy_dir), "--reason", reason, "--json"
    )
    assert code == 0, out + err
    return json.loads(out)


async def rows(stack) -> list[dict]:
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        found = await conn.fetch("select * from policy_history where env = $1 order by version", stack.env)
    finally:
        await conn.close()
    return [dict(r) for r in found]


async def kv_versions(stack) -> list[int]:
    nc = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    try:
        entries = await ConfigStore(nc.jetstream(), stack.env).entries()
    finally:
        await nc.close()
    return [read_version(e.value).version for e in entries]


def slower_triage(stack) -> dict:
    policy = stack.policy()
    policy["workflows"]["support-triage"]["tiers"][0]["timeout_ms"] = 2500
    return policy


def edit_triage_timeout(stack) -> None:
    """Change one field of the workflow files, as an operator's edit would."""
    path = stack.policy_dir / "workflows.yaml"
    text = path.read_text()
    old = "model: gpt-sim-large, timeout_ms: 5000"
    assert text.count(old) == 1
    path.write_text(text.replace(old, "model: gpt-sim-large, timeout_ms: 2500"))


async def test_every_version_is_in_the_history_before_it_reaches_kv(stack):
    nc = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    seen: list[tuple[int, list]] = []
    try:
        kv = await ConfigStore(nc.jetstream(), stack.env).bucket()
        watcher = await kv.watch(names.CONFIG_KEY)

        async def check_on_arrival():
            async for entry in watcher:
                if entry is None or not entry.value:
                    continue
                number = read_version(entry.value).version
                seen.append((number, [r["version"] for r in await rows(stack)]))  # read at arrival

        follower = asyncio.create_task(check_on_arrival())
        first = await apply(stack, "first cut")
        code, out, err = await sbctl(
            stack, "config", "apply", str(stack.policy_dir), "--reason", "again", "--force", "--json"
        )
        assert code == 0, out + err
        await wait_for(lambda: len(seen) == 2, message="both versions through the KV watch")
        follower.cancel()
        await watcher.stop()
    finally:
        await nc.close()

    assert first["version"] == 1
    assert seen == [(1, [1]), (2, [1, 2])], "a version reached KV before its history row existed"
    recorded = await rows(stack)
    expected = load_dir(stack.policy_dir).document  # as written: variables unexpanded
    assert [(r["version"], r["state"], r["action"], r["reason"]) for r in recorded] == [
        (1, "distributed", "apply", "first cut"),
        (2, "distributed", "apply", "again"),
    ]
    assert {(r["applied_by"], r["by_source"], r["checksum"]) for r in recorded} == {
        ("alice", "configured", document_checksum(expected))
    }
    assert json.loads(recorded[0]["policy"]) == expected


async def test_apply_fails_and_distributes_nothing_when_postgresql_does_not_answer(stack):
    unreachable = {**ALICE, "SB_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/switchboard"}

    code, out, err = await sbctl(
        stack, "config", "apply", str(stack.policy_dir), "--reason", "blind", operator=unreachable
    )

    assert (code, out) == (3, "")
    assert err.startswith("error [unavailable]: cannot write or read the policy history in PostgreSQL")
    assert len(err.splitlines()) == 1
    assert await kv_versions(stack) == [], "a version was distributed without a history row"
    assert await rows(stack) == []


async def test_config_at_a_time_between_two_versions_and_for_a_workflow_that_changed(stack):
    await apply(stack, "baseline")
    edit_triage_timeout(stack)
    await apply(stack, "tighter first tier for triage")
    first, second = await rows(stack)
    between = first["applied_at"] + (second["applied_at"] - first["applied_at"]) / 2

    code, out, err = await sbctl(
        stack, "config", "at", between.isoformat(), "--workflow", "support-triage", "--json"
    )
    assert code == 0, err
    answer = json.loads(out)
    assert answer["version"]["version"] == 1
    assert answer["version"]["applied_by"] == "alice" and answer["version"]["reason"] == "baseline"
    assert answer["effective"]["workflow"]["tiers"][0]["timeout_ms"] == 5000
    assert set(answer["effective"]["providers"]) == {"openai-sim", "anthropic-sim"}

    after = (second["applied_at"] + timedelta(seconds=1)).isoformat()
    code, out, err = await sbctl(stack, "config", "at", after, "--workflow", "support-triage")
    assert code == 0, err
    assert out.splitlines()[0].endswith(f"env {stack.env} ran version 2")
    assert "reason: tighter first tier for triage" in out
    assert "timeout_ms: 2500" in out

    before = (first["applied_at"] - timedelta(seconds=5)).isoformat()
    code, _, err = await sbctl(stack, "config", "at", before)
    assert code == 1 and "[not_found]" in err

    code, out, err = await sbctl(stack, "config", "history", "--workflow", "research-summary", "--json")
    assert code == 0, err
    assert [v["version"] for v in json.loads(out)["versions"]] == [1]  # unchanged in version 2
    code, out, err = await sbctl(stack, "config", "history", "--workflow", "support-triage", "--json")
    assert [(v["version"], v["workflow_change"]) for v in json.loads(out)["versions"]] == [
        (2, "changed"),
        (1, "added"),
    ]


async def test_rollback_is_a_new_version_with_the_old_content_and_every_service_runs_it(stack):
    await stack.start("gateway", "router")
    await apply(stack, "baseline")
    edit_triage_timeout(stack)
    await apply(stack, "tighter")

    code, out, err = await sbctl(stack, "config", "rollback", "--to", "1", "--reason", "timeouts spiked")

    assert code == 0, err
    assert out.startswith(f"rolled back: version 3 of env {stack.env} has the content of version 1")
    recorded = await rows(stack)
    assert [(r["version"], r["action"], r["rollback_of"]) for r in recorded] == [
        (1, "apply", None),
        (2, "apply", None),
        (3, "rollback", 1),
    ]
    assert recorded[2]["checksum"] == recorded[0]["checksum"] != recorded[1]["checksum"]
    await wait_for(lambda: all(stack[s].config_version == "3" for s in ("gateway", "router")))
    assert stack["gateway"].config.active.policy.workflows["support-triage"].tiers[0].timeout_ms == 5000

    code, out, err = await sbctl(stack, "config", "diff", "2", "3")
    assert code == 0, err
    assert out.splitlines()[1:] == ["  workflows.support-triage.tiers.0.timeout_ms: 2500 -> 5000"]
    code, out, _ = await sbctl(stack, "config", "history")
    assert "rollback to 1" in out and "timeouts spiked" in out


async def test_an_environment_s_existing_kv_versions_are_imported_once(stack):
    await stack.apply(wait=False)  # written straight to KV, as before the history existed
    await stack.apply(slower_triage(stack), wait=False)

    for _ in range(2):
        code, out, err = await sbctl(stack, "config", "history", "--json")
        assert code == 0, err
        versions = json.loads(out)["versions"]
        assert [(v["version"], v["action"], v["applied_by"]) for v in versions] == [
            (2, "import", "tests"),
            (1, "import", "tests"),
        ]
    assert (await apply(stack, "first through the history"))["version"] == 3
    assert [r["version"] for r in await rows(stack)] == [1, 2, 3]

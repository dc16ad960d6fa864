"""sbctl as an operator runs it: a subprocess against the real NATS, with `--env` per test."""

from __future__ import annotations

import json
import shutil
import time

import redis.asyncio as aioredis
import yaml

from shared import keys
from shared.policy import document_checksum, load_dir
from tests.support.helpers import run_sbctl
from tests.support.stack import wait_for


def broken_copy(stack, tmp_path):
    """A copy of the test's policy whose second support-triage tier names a missing provider."""
    target = tmp_path / "broken"
    shutil.copytree(stack.policy_dir, target)
    path = target / "workflows.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["workflows"]["support-triage"]["tiers"][1]["provider"] = "nope-ai"
    path.write_text(yaml.safe_dump(doc))
    return target, path


async def test_validate_ok(stack):
    code, out, err = await run_sbctl(stack.infra, "config", "validate", str(stack.policy_dir))

    assert code == 0, err
    assert "ok: 2 providers, 3 workflows in 3 files" in out


async def test_validate_broken_prints_file_path_message_and_exits_1(stack, tmp_path):
    target, path = broken_copy(stack, tmp_path)

    code, out, _ = await run_sbctl(stack.infra, "config", "validate", str(target), "--env", stack.env)

    assert code == 1
    assert f"{path}: workflows.support-triage.tiers.1.provider: no provider named 'nope-ai'" in out


async def test_validate_broken_json(stack, tmp_path):
    target, path = broken_copy(stack, tmp_path)

    code, out, _ = await run_sbctl(stack.infra, "config", "validate", str(target), "--json")

    assert code == 1
    body = json.loads(out)
    assert body["ok"] is False
    assert body["errors"] == [
        {
            "file": str(path),
            "path": "workflows.support-triage.tiers.1.provider",
            "message": "no provider named 'nope-ai'",
        }
    ]


async def test_apply_show_and_unchanged_reapply(stack):
    policy_dir = str(stack.policy_dir)

    code, out, err = await run_sbctl(
        stack.infra, "config", "apply", policy_dir, "--reason", "test", "--env", stack.env, "--json"
    )
    assert code == 0, err
    applied = json.loads(out)
    assert applied["applied"] is True and applied["version"] == 1

    code, out, err = await run_sbctl(stack.infra, "config", "show", "--env", stack.env, "--json")
    assert code == 0, err
    shown = json.loads(out)
    expected = load_dir(stack.policy_dir).document  # versions carry the files unexpanded
    assert shown["version"] == 1
    assert shown["checksum"] == document_checksum(expected) == applied["checksum"]
    assert shown["policy"] == expected
    assert shown["source"] == policy_dir
    assert set(shown["policy"]["workflows"]) == {"support-triage", "research-summary", "refunds"}

    code, out, err = await run_sbctl(
        stack.infra, "config", "apply", policy_dir, "--reason", "test", "--env", stack.env
    )
    assert code == 0, err
    assert "unchanged" in out and "version 1" in out

    code, out, _ = await run_sbctl(stack.infra, "config", "show", "--env", stack.env)
    assert code == 0
    assert out.startswith("version 1 applied by ")
    assert "support-triage: openai-sim/gpt-sim-large -> anthropic-sim/claude-sim-sonnet" in out
    assert "    tier 1  anthropic-sim/claude-sim-sonnet  timeout 8000 ms  slo_p99 3000 ms" in out


async def test_apply_of_broken_files_applies_nothing(stack, tmp_path):
    target, _ = broken_copy(stack, tmp_path)

    code, out, _ = await run_sbctl(
        stack.infra, "config", "apply", str(target), "--reason", "test", "--env", stack.env, "--json"
    )
    assert code == 1
    assert json.loads(out)["error"]["code"] == "invalid_policy"

    code, out, _ = await run_sbctl(stack.infra, "config", "show", "--env", stack.env, "--json")
    assert code == 1
    assert json.loads(out)["error"]["code"] == "not_found"


async def test_invoke_then_trace(running):
    env = running.env
    code, out, err = await run_sbctl(
        running.infra, "invoke", "support-triage", "hello there", "--env", env, "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "success"
    assert (result["provider"], result["model"]) == ("openai-sim", "gpt-sim-large")
    inv_id = result["invocation_id"]

    async def traced():
        code, out, _ = await run_sbctl(running.infra, "trace", inv_id, "--env", env, "--json")
        if code != 0:
            return None
        body = json.loads(out)
        kinds = {e["kind"] for e in body["events"]}
        return body if body["invocation"] and {"invocation", "attempt"} <= kinds else None

    body = await wait_for(traced, timeout=30, interval=0.2, message="the recorder to hold the trace")
    assert body["found"] is True
    assert body["invocation"]["status"] == "success"
    assert body["invocation"]["trace_id"] == result["trace_id"]
    attempts = [e for e in body["events"] if e["kind"] == "attempt"]
    assert [(a["tier"], a["provider"], a["outcome"]) for a in attempts] == [(0, "openai-sim", "ok")]

    code, out, err = await run_sbctl(running.infra, "trace", inv_id, "--env", env)
    assert code == 0, err
    assert f"invocation {inv_id}  workflow support-triage  status success" in out
    assert "tier 0 openai-sim/gpt-sim-large: ok" in out


async def test_trace_of_an_unknown_invocation_is_not_found(running):
    code, out, _ = await run_sbctl(running.infra, "trace", "never-sent", "--env", running.env, "--json")

    assert code == 1
    assert json.loads(out)["error"]["code"] == "not_found"


async def test_invoke_with_no_gateway_fails_with_a_code(stack):
    t0 = time.monotonic()
    code, out, _ = await run_sbctl(
        stack.infra, "invoke", "support-triage", "hi", "--env", stack.env, "--json", "--timeout", "2"
    )

    assert code == 3  # documented: unavailable
    assert json.loads(out)["error"]["code"] == "control_plane_unavailable"
    assert time.monotonic() - t0 < 20


async def test_invalid_env_exits_2(stack):
    code, out, err = await run_sbctl(stack.infra, "config", "show", "--env", "Bad Env")

    assert code == 2
    assert "invalid_env" in err
    assert out == ""


async def test_an_option_the_contract_refuses_is_a_coded_usage_error_and_changes_nothing(stack):
    reason = "x" * 201  # the block request's reason holds at most 200 characters
    code, out, err = await run_sbctl(
        stack.infra, "provider", "block", "openai-sim", "--reason", reason, "--env", stack.env, "--json"
    )

    assert code == 2, err
    error = json.loads(out)["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("reason: ") and "200" in error["message"]
    assert "Traceback" not in err
    r = aioredis.from_url(stack.infra.redis_url)
    try:
        assert await r.hgetall(keys.provider_blocks(stack.env)) == {}
    finally:
        await r.aclose()

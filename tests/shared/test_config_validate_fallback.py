"""`sbctl config validate` (and `apply`) on fallback chains, as an operator runs them: a
workflow with a single tier is rejected; one whose every tier is at one provider is accepted
with a warning. (tests/shared/test_policy.py covers the same rules at the loader level.)"""

from __future__ import annotations

import json
import shutil

import yaml

from tests.support.helpers import run_sbctl


def edited_copy(stack, tmp_path, change) -> tuple:
    target = tmp_path / "edited"
    shutil.copytree(stack.policy_dir, target)
    path = target / "workflows.yaml"
    doc = yaml.safe_load(path.read_text())
    change(doc["workflows"]["support-triage"])
    path.write_text(yaml.safe_dump(doc))
    return target, path


def single_tier(workflow: dict) -> None:
    workflow["tiers"] = workflow["tiers"][:1]


def one_provider(workflow: dict) -> None:
    workflow["tiers"][1] = {"provider": "openai-sim", "model": "gpt-sim-mini", "timeout_ms": 5000}


async def test_validate_rejects_a_workflow_without_a_fallback_tier(stack, tmp_path):
    target, path = edited_copy(stack, tmp_path, single_tier)

    code, out, _ = await run_sbctl(stack.infra, "config", "validate", str(target), "--env", stack.env)

    assert code == 1
    assert (
        f"error: {path}: workflows.support-triage.tiers: a workflow needs at least one fallback tier" in out
    )

    code, out, _ = await run_sbctl(stack.infra, "config", "validate", str(target), "--json")
    assert code == 1
    body = json.loads(out)
    assert body["ok"] is False
    assert body["errors"] == [
        {
            "file": str(path),
            "path": "workflows.support-triage.tiers",
            "message": "a workflow needs at least one fallback tier",
        }
    ]


async def test_apply_refuses_a_workflow_without_a_fallback_tier(stack, tmp_path):
    target, _ = edited_copy(stack, tmp_path, single_tier)

    code, out, _ = await run_sbctl(
        stack.infra, "config", "apply", str(target), "--reason", "test", "--env", stack.env, "--json"
    )

    assert code == 1
    assert json.loads(out) == {
        "ok": False,
        "error": {"code": "invalid_policy", "message": f"1 problem(s) in {target}; nothing applied"},
    }
    code, out, _ = await run_sbctl(stack.infra, "config", "show", "--env", stack.env, "--json")
    assert code == 1
    assert json.loads(out)["error"]["code"] == "not_found"


async def test_validate_warns_when_every_tier_is_at_one_provider(stack, tmp_path):
    target, _ = edited_copy(stack, tmp_path, one_provider)

    code, out, _ = await run_sbctl(stack.infra, "config", "validate", str(target))

    assert code == 0
    assert (
        "warning: workflows.support-triage.tiers: every tier is at provider 'openai-sim';"
        " a provider outage leaves no path"
    ) in out
    assert "ok: 2 providers, 3 workflows" in out

    code, out, _ = await run_sbctl(stack.infra, "config", "validate", str(target), "--json")
    assert code == 0
    body = json.loads(out)
    assert body["ok"] is True and body["errors"] == []
    assert len(body["warnings"]) == 1
    assert body["warnings"][0].startswith("workflows.support-triage.tiers: every tier is at provider")

"""shared.policy.load_dir: the example config loads clean; every problem names its file and the
dotted path inside the merged document; warnings; `${VAR:-default}` expansion."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from shared.policy import PolicyLoadError, document_checksum, load_dir, load_dir_or_raise
from tests.support.stack import REPO


@pytest.fixture
def cfg(tmp_path) -> Path:
    """A private copy of the example config/ directory."""
    target = tmp_path / "config"
    shutil.copytree(REPO / "config", target)
    return target


def read(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def write(path: Path, doc: dict) -> None:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def edit_workflows(cfg: Path, change) -> Path:
    path = cfg / "workflows.yaml"
    doc = read(path)
    change(doc["workflows"])
    write(path, doc)
    return path


def only_problem(result):
    assert not result.ok
    assert result.policy is None
    assert len(result.problems) == 1, [str(p) for p in result.problems]
    return result.problems[0]


def test_example_config_loads_with_no_problems_and_no_warnings():
    result = load_dir(REPO / "config")

    assert result.ok, [str(p) for p in result.problems]
    assert result.problems == [] and result.warnings == []
    assert sorted(Path(f).name for f in result.files) == ["providers.yaml", "reviews.yaml", "workflows.yaml"]
    assert set(result.policy.providers) == {"openai-sim", "anthropic-sim"}
    assert set(result.policy.workflows) == {"support-triage", "research-summary", "refunds"}
    assert set(result.policy.review_queues) == {"payments", "payments-leads"}
    triage = result.policy.workflows["support-triage"]
    assert [(t.provider, t.model, t.timeout_ms) for t in triage.tiers] == [
        ("openai-sim", "gpt-sim-large", 5000),
        ("anthropic-sim", "claude-sim-sonnet", 8000),
    ]
    assert triage.budget.max_tokens_per_invocation == 4000


def test_checksum_is_stable_and_changes_with_the_policy(cfg):
    first = load_dir_or_raise(cfg).checksum()
    assert load_dir_or_raise(cfg).checksum() == first
    edit_workflows(cfg, lambda w: w["support-triage"]["budget"].update(max_tokens_per_invocation=3999))
    assert load_dir_or_raise(cfg).checksum() != first


def test_negative_timeout_names_file_and_path(cfg):
    path = edit_workflows(cfg, lambda w: w["support-triage"]["tiers"][0].update(timeout_ms=-5))

    problem = only_problem(load_dir(cfg))

    assert problem.file == str(path)
    assert problem.path == "workflows.support-triage.tiers.0.timeout_ms"
    assert "greater than 0" in problem.message
    assert str(problem).startswith(f"{path}: workflows.support-triage.tiers.0.timeout_ms: ")


def test_unknown_provider_in_a_tier_names_file_and_path(cfg):
    path = edit_workflows(cfg, lambda w: w["support-triage"]["tiers"][1].update(provider="nope-ai"))

    problem = only_problem(load_dir(cfg))

    assert problem.file == str(path)
    assert problem.path == "workflows.support-triage.tiers.1.provider"
    assert problem.message == "no provider named 'nope-ai'"


def test_unknown_model_names_file_and_path(cfg):
    path = edit_workflows(cfg, lambda w: w["research-summary"]["tiers"][2].update(model="gpt-9"))

    problem = only_problem(load_dir(cfg))

    assert problem.file == str(path)
    assert problem.path == "workflows.research-summary.tiers.2.model"
    assert problem.message == "provider 'openai-sim' has no model 'gpt-9'"


def test_a_workflow_with_one_tier_needs_a_fallback_tier(cfg):
    path = edit_workflows(cfg, lambda w: w["support-triage"].update(tiers=w["support-triage"]["tiers"][:1]))

    problem = only_problem(load_dir(cfg))

    assert problem.file == str(path)
    assert problem.path == "workflows.support-triage.tiers"
    assert "at least one fallback tier" in problem.message


def test_several_problems_are_all_reported(cfg):
    def change(w):
        w["support-triage"]["tiers"][1]["provider"] = "nope-ai"
        w["research-summary"]["tiers"][0]["model"] = "claude-9"

    edit_workflows(cfg, change)

    result = load_dir(cfg)

    assert sorted(p.path for p in result.problems) == [
        "workflows.research-summary.tiers.0.model",
        "workflows.support-triage.tiers.1.provider",
    ]
    assert {Path(p.file).name for p in result.problems} == {"workflows.yaml"}


def test_provider_problem_names_the_providers_file(cfg):
    path = cfg / "providers.yaml"
    doc = read(path)
    doc["providers"]["anthropic-sim"]["base_url"] = "ftp://example.com"
    write(path, doc)

    problem = only_problem(load_dir(cfg))

    assert problem.file == str(path)
    assert problem.path == "providers.anthropic-sim.base_url"


def test_unknown_field_names_file_and_path(cfg):
    path = edit_workflows(cfg, lambda w: w["support-triage"]["budget"].update(max_tokens=5))

    problem = only_problem(load_dir(cfg))

    assert problem.file == str(path)
    assert problem.path == "workflows.support-triage.budget.max_tokens"
    assert "Extra inputs are not permitted" in problem.message


def test_unknown_section_names_file_and_section(cfg):
    path = cfg / "workflows.yaml"
    doc = read(path)
    doc["routes"] = {"a": {"b": 1}}
    write(path, doc)

    problem = only_problem(load_dir(cfg))

    assert problem.file == str(path)
    assert problem.path == "routes"
    assert "unknown section" in problem.message and "providers, workflows" in problem.message


def test_duplicate_workflow_across_two_files_names_both(cfg):
    triage = read(cfg / "workflows.yaml")["workflows"]["support-triage"]
    extra = cfg / "more-workflows.yaml"
    write(extra, {"workflows": {"support-triage": triage}})

    problem = only_problem(load_dir(cfg))
    text = str(problem)

    assert problem.path == "workflows.support-triage"
    assert str(cfg / "workflows.yaml") in text
    assert str(extra) in text
    assert "also defined in" in problem.message


def test_invalid_yaml_names_the_file(cfg):
    bad = cfg / "broken.yaml"
    bad.write_text("workflows:\n  x: [unclosed\n")

    result = load_dir(cfg)

    problem = only_problem(result)
    assert problem.file == str(bad)
    assert problem.message.startswith("not valid YAML")


def test_a_file_that_is_not_a_mapping_is_a_problem(cfg):
    bad = cfg / "list.yaml"
    bad.write_text("- providers\n- workflows\n")

    problem = only_problem(load_dir(cfg))

    assert problem.file == str(bad)
    assert "mapping" in problem.message


def test_empty_directory(tmp_path):
    problem = only_problem(load_dir(tmp_path))

    assert problem.file == str(tmp_path)
    assert "no *.yaml files" in problem.message


def test_missing_directory(tmp_path):
    problem = only_problem(load_dir(tmp_path / "nowhere"))

    assert "not a directory" in problem.message


def test_load_dir_or_raise_carries_the_problems(cfg):
    edit_workflows(cfg, lambda w: w["support-triage"]["tiers"][0].update(timeout_ms=0))

    with pytest.raises(PolicyLoadError) as caught:
        load_dir_or_raise(cfg)

    assert [p.path for p in caught.value.problems] == ["workflows.support-triage.tiers.0.timeout_ms"]
    assert "workflows.yaml: workflows.support-triage.tiers.0.timeout_ms" in str(caught.value)


def test_warning_when_every_tier_is_at_one_provider(cfg):
    def change(w):
        w["support-triage"]["tiers"][1] = {"provider": "openai-sim", "model": "gpt-sim-mini"}

    edit_workflows(cfg, change)

    result = load_dir(cfg)

    assert result.ok, [str(p) for p in result.problems]
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("workflows.support-triage.tiers: every tier is at provider")
    assert "'openai-sim'" in result.warnings[0]


def test_env_reference_with_default(cfg, monkeypatch):
    monkeypatch.delenv("SB_SIMULATOR_URL", raising=False)
    policy = load_dir_or_raise(cfg)
    assert policy.providers["openai-sim"].base_url == "http://127.0.0.1:9180/p/openai-sim/v1"

    monkeypatch.setenv("SB_SIMULATOR_URL", "http://sim.internal:7000")
    monkeypatch.setenv("SB_PROVIDER_HOSTS", "sim.internal")  # the deployment allows that host
    policy = load_dir_or_raise(cfg)
    assert policy.providers["openai-sim"].base_url == "http://sim.internal:7000/p/openai-sim/v1"
    assert policy.providers["anthropic-sim"].base_url == "http://sim.internal:7000/p/anthropic-sim/v1"


def test_env_reference_without_default(cfg, monkeypatch):
    path = edit_workflows(cfg, lambda w: None)
    path.write_text(path.read_text().replace("support-platform", "${SB_TEST_OWNER}-team"))

    monkeypatch.setenv("SB_TEST_OWNER", "payments")
    assert load_dir_or_raise(cfg).workflows["support-triage"].owner == "payments-team"

    monkeypatch.delenv("SB_TEST_OWNER")
    problem = only_problem(load_dir(cfg))  # an error, never a silent empty string
    assert (problem.file, problem.path) == (str(path), "workflows.support-triage.owner")
    assert problem.message == "${SB_TEST_OWNER} is not set and has no default"


def test_versions_carry_the_document_unexpanded_and_its_checksum_ignores_the_environment(cfg, monkeypatch):
    monkeypatch.setenv("SB_SIMULATOR_URL", "http://127.0.0.1:1")
    here = load_dir(cfg)
    monkeypatch.setenv("SB_SIMULATOR_URL", "http://localhost:7000")
    there = load_dir(cfg)

    assert here.document == there.document
    assert here.document["providers"]["openai-sim"]["base_url"].startswith("${SB_SIMULATOR_URL:-")
    assert document_checksum(here.document) == document_checksum(there.document)
    assert here.policy.providers["openai-sim"].base_url == "http://127.0.0.1:1/p/openai-sim/v1"
    assert there.policy.providers["openai-sim"].base_url == "http://localhost:7000/p/openai-sim/v1"


def test_field_and_cross_reference_errors_are_reported_in_one_pass(cfg):
    def break_both(w):
        w["support-triage"]["tiers"][0]["timeout_ms"] = -1  # a field error
        w["research-summary"]["tiers"][0]["provider"] = "nobody"  # a cross-reference error

    path = edit_workflows(cfg, break_both)

    result = load_dir(cfg)

    assert sorted((p.file, p.path) for p in result.problems) == [
        (str(path), "workflows.research-summary.tiers.0.provider"),
        (str(path), "workflows.support-triage.tiers.0.timeout_ms"),
    ]


def test_a_message_with_a_semicolon_is_kept_whole(cfg):
    path = cfg / "providers.yaml"
    doc = read(path)
    doc["providers"]["openai-sim"]["models"]["gpt-sim-mini"]["tokenizer"] = "klingon"
    write(path, doc)

    problem = only_problem(load_dir(cfg))

    assert (problem.file, problem.path) == (str(path), "providers.openai-sim.models.gpt-sim-mini.tokenizer")
    assert problem.message.startswith("unknown estimator 'klingon'; known: ")


def test_env_reference_default_applies_when_the_variable_is_empty(cfg, monkeypatch):
    monkeypatch.setenv("SB_SIMULATOR_URL", "")

    result = load_dir(cfg)

    assert result.ok, [str(p) for p in result.problems]
    assert result.policy.providers["openai-sim"].base_url == "http://127.0.0.1:9180/p/openai-sim/v1"


def test_a_workflow_name_that_cannot_be_a_subject_token_is_rejected(cfg):
    path = cfg / "workflows.yaml"
    path.write_text(path.read_text().replace("  support-triage:", "  triage.v2:"))

    result = load_dir(cfg)

    assert not result.ok
    assert [(p.file, p.path.startswith("workflows.triage.v2")) for p in result.problems] == [
        (str(path), True)
    ]


def test_degradation_is_declared_per_workflow_and_defaults_to_fail_closed(cfg):
    policy = load_dir_or_raise(cfg)
    assert policy.workflows["support-triage"].degradation == "fail_closed"
    assert policy.workflows["research-summary"].degradation == "passthrough"

    edit_workflows(cfg, lambda wfs: wfs["research-summary"].pop("degradation"))
    assert load_dir_or_raise(cfg).workflows["research-summary"].degradation == "fail_closed"


def test_an_unknown_degradation_mode_names_file_and_path(cfg):
    path = edit_workflows(cfg, lambda wfs: wfs["support-triage"].update(degradation="allow"))

    problem = only_problem(load_dir(cfg))

    assert (problem.file, problem.path) == (str(path), "workflows.support-triage.degradation")

"""Review queues and rules in policy: validated with the file/path errors of every other section
(unknown queue, unknown field, missing timeout action, escalation without a target or in a loop,
a bad regex), and the compiled rules match exactly what their conditions say."""

from __future__ import annotations

import shutil

import pytest
import yaml

from services.gateway.gates import Facts, Gates
from shared.policy import load_dir
from shared.review_policy import Stage
from tests.support.stack import REPO


@pytest.fixture
def cfg(tmp_path):
    target = tmp_path / "config"
    shutil.copytree(REPO / "config", target)
    return target


def with_reviews(cfg, queues=None, rules=None):
    path = cfg / "reviews.yaml"
    doc = yaml.safe_load(path.read_text())
    if queues is not None:
        doc["review_queues"] = queues
    if rules is not None:
        doc["review_rules"] = rules
    path.write_text(yaml.safe_dump(doc))
    return load_dir(cfg)


def problems(result) -> list[str]:
    assert not result.ok
    return [str(p) for p in result.problems]


QUEUE = {"owner": "ops", "sla_s": 60, "timeout_s": 120, "on_timeout": "reject"}


def test_a_rule_naming_an_unknown_queue_is_an_error_with_its_file_and_path(cfg):
    result = with_reviews(cfg, rules={"r": {"stage": "pre", "queue": "nope"}})
    assert any(
        "reviews.yaml: review_rules.r.queue: no review queue named 'nope'" in p for p in problems(result)
    )


def test_a_rule_naming_an_unknown_field_is_an_error(cfg):
    result = with_reviews(cfg, rules={"r": {"stage": "pre", "queue": "payments", "when": {"colour": "red"}}})
    assert any("review_rules.r.when.colour" in p for p in problems(result))


def test_a_queue_without_a_timeout_action_is_invalid(cfg):
    queue = {k: v for k, v in QUEUE.items() if k != "on_timeout"}
    result = with_reviews(cfg, queues={"q": queue}, rules={})
    assert any("review_queues.q.on_timeout" in p for p in problems(result))


def test_escalation_needs_a_known_target_and_must_not_loop(cfg):
    missing = with_reviews(cfg, queues={"q": {**QUEUE, "on_timeout": "escalate"}}, rules={})
    assert any("escalate needs escalate_to" in p for p in problems(missing))
    unknown = with_reviews(
        cfg, queues={"q": {**QUEUE, "on_timeout": "escalate", "escalate_to": "x"}}, rules={}
    )
    assert any("no review queue named 'x'" in p for p in problems(unknown))
    loop = {
        "a": {**QUEUE, "on_timeout": "escalate", "escalate_to": "b"},
        "b": {**QUEUE, "on_timeout": "escalate", "escalate_to": "a"},
    }
    assert any("escalation loops" in p for p in problems(with_reviews(cfg, queues=loop, rules={})))


def test_bad_regex_and_empty_condition_are_errors(cfg):
    bad = with_reviews(
        cfg, rules={"r": {"stage": "pre", "queue": "payments", "when": {"agent": {"regex": "("}}}}
    )
    assert any("not a valid regular expression" in p for p in problems(bad))
    empty = with_reviews(cfg, rules={"r": {"stage": "pre", "queue": "payments", "when": {"agent": {}}}})
    assert any("at least one of" in p for p in problems(empty))


def facts(**overrides) -> Facts:
    base = dict(
        workflow="refunds",
        agent="refund-bot",
        provider="openai-sim",
        model="gpt-sim-mini",
        metadata={},
        estimated_tokens=100,
        estimated_cost_usd=0.001,
    )
    return Facts(**{**base, **overrides})


def gates_for(cfg, when: dict, stage: str = "pre") -> Gates:
    result = with_reviews(cfg, rules={"r": {"stage": stage, "queue": "payments", "when": when}})
    assert result.ok, problems(result)
    return Gates(result.policy)


@pytest.mark.parametrize(
    ("when", "hit", "miss"),
    [
        ({"metadata": {"amount": {"gt": 500}}}, {"metadata": {"amount": 501}}, {"metadata": {"amount": 500}}),
        ({"metadata": {"amount": {"le": 10}}}, {"metadata": {"amount": 10}}, {"metadata": {"amount": "10"}}),
        ({"metadata": {"region": {"in": ["eu", "uk"]}}}, {"metadata": {"region": "uk"}}, {"metadata": {}}),
        ({"agent": {"regex": "^refund-"}}, {"agent": "refund-bot"}, {"agent": "triage-bot"}),
        ({"model": "gpt-sim-mini"}, {}, {"model": "gpt-sim-large"}),
        ({"estimated_tokens": {"ge": 1000}}, {"estimated_tokens": 1000}, {"estimated_tokens": 999}),
        ({"estimated_cost_usd": {"gt": 0.5}}, {"estimated_cost_usd": 0.51}, {"estimated_cost_usd": 0.5}),
    ],
)
def test_conditions_match_exactly_what_they_say(cfg, when, hit, miss):
    gates = gates_for(cfg, {"workflow": "refunds", **when})
    matched = gates.first_match(Stage.PRE, facts(**hit))
    assert matched is not None and matched.rule == "r" and matched.queue == "payments"
    assert gates.first_match(Stage.PRE, facts(**miss)) is None
    assert gates.first_match(Stage.POST, facts(**hit)) is None


def test_workflows_no_rule_can_match_pay_nothing(cfg):
    gates = gates_for(cfg, {"workflow": {"in": ["refunds"]}})
    assert gates.applies("refunds", Stage.PRE)
    assert not gates.applies("support-triage", Stage.PRE) and not gates.applies("refunds", Stage.POST)


def test_matched_values_are_reported(cfg):
    gates = gates_for(cfg, {"workflow": "refunds", "metadata": {"amount": {"gt": 1}}})
    found = gates.first_match(Stage.PRE, facts(metadata={"amount": 7, "other": "x"}))
    assert found.matched == {"workflow": "refunds", "metadata.amount": 7}


def test_a_reviewed_workflow_cannot_pass_through_when_the_plane_is_down(cfg):
    unscoped = with_reviews(cfg, rules={"r": {"stage": "pre", "queue": "payments"}})
    assert any(
        "review_rules.r.when.workflow: workflow 'research-summary' has degradation: passthrough" in p
        for p in problems(unscoped)
    )
    scoped = with_reviews(
        cfg, rules={"r": {"stage": "pre", "queue": "payments", "when": {"workflow": "refunds"}}}
    )
    assert scoped.ok, problems(scoped)


def test_a_workflow_whose_output_a_post_rule_holds_cannot_stream(cfg):
    unscoped = with_reviews(cfg, rules={"r": {"stage": "post", "queue": "payments"}})
    found = [p for p in problems(unscoped) if "streams (streaming: true" in p]
    assert len(found) == 2, found  # support-triage and research-summary; refunds says false
    assert all("reviews.yaml: review_rules.r.when.workflow: workflow " in p for p in found), found
    assert any("'support-triage'" in p and "set streaming: false" in p for p in found)

    pre = with_reviews(
        cfg, rules={"r": {"stage": "pre", "queue": "payments", "when": {"workflow": "refunds"}}}
    )
    assert pre.ok, problems(pre)  # a pre rule holds nothing that was streamed
    workflows = yaml.safe_load((cfg / "workflows.yaml").read_text())
    workflows["workflows"]["refunds"]["streaming"] = True
    (cfg / "workflows.yaml").write_text(yaml.safe_dump(workflows))
    post = with_reviews(
        cfg, rules={"r": {"stage": "post", "queue": "payments", "when": {"workflow": "refunds"}}}
    )
    assert [p for p in problems(post) if "'refunds' streams" in p]

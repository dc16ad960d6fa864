"""Review rules, compiled once per policy version and indexed by workflow and stage, so that an
invocation no rule can match pays one dictionary lookup and nothing else."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shared.policy import Policy
from shared.review_policy import Condition, RuleSpec, Stage, workflows_matched


@dataclass(frozen=True)
class Facts:
    """What a rule may test about one invocation at one stage."""

    workflow: str
    agent: str | None
    provider: str | None
    model: str | None
    metadata: dict[str, Any]
    estimated_tokens: int
    estimated_cost_usd: float


@dataclass(frozen=True)
class Match:
    rule: str
    queue: str
    stage: Stage
    matched: dict[str, Any]  # field -> the value that met the condition


class _Compiled:
    def __init__(self, name: str, spec: RuleSpec) -> None:
        self.name = name
        self.spec = spec
        when = spec.when
        self.tests: list[tuple[str, Condition, re.Pattern | None]] = []
        for field in ("workflow", "agent", "provider", "model", "estimated_tokens", "estimated_cost_usd"):
            cond = getattr(when, field)
            if cond is not None:
                self.tests.append((field, cond, re.compile(cond.regex) if cond.regex else None))
        for key, cond in when.metadata.items():
            self.tests.append((f"metadata.{key}", cond, re.compile(cond.regex) if cond.regex else None))

    def match(self, facts: Facts) -> Match | None:
        matched: dict[str, Any] = {}
        for field, cond, pattern in self.tests:
            if field.startswith("metadata."):
                key = field.removeprefix("metadata.")
                if key not in facts.metadata:
                    return None
                value = facts.metadata[key]
            else:
                value = getattr(facts, field)
            if not _holds(cond, pattern, value):
                return None
            matched[field] = value
        return Match(self.name, self.spec.queue, self.spec.stage, matched)


def _holds(cond: Condition, pattern: re.Pattern | None, value: Any) -> bool:
    if value is None:
        return False
    if cond.equals is not None and value != cond.equals:
        return False
    if cond.in_ is not None and value not in cond.in_:
        return False
    if cond.gt is not None or cond.ge is not None or cond.lt is not None or cond.le is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if cond.gt is not None and not value > cond.gt:
            return False
        if cond.ge is not None and not value >= cond.ge:
            return False
        if cond.lt is not None and not value < cond.lt:
            return False
        if cond.le is not None and not value <= cond.le:
            return False
    return pattern is None or pattern.search(str(value)) is not None


class Gates:
    """The rules of one policy version: `for_stage(workflow, stage)` is empty for most workflows."""

    def __init__(self, policy: Policy) -> None:
        self._index: dict[tuple[str | None, Stage], list[_Compiled]] = {}
        for name, spec in sorted(policy.review_rules.items()):
            compiled = _Compiled(name, spec)
            for workflow in workflows_matched(spec, policy.workflows):
                self._index.setdefault((workflow, spec.stage), []).append(compiled)

    def applies(self, workflow: str, stage: Stage) -> bool:
        return (workflow, stage) in self._index

    def rules(self, workflow: str, stage: Stage) -> list[str]:
        """Names of the rules that may match a workflow at a stage."""
        return [rule.name for rule in self._index.get((workflow, stage), ())]

    def first_match(self, stage: Stage, facts: Facts) -> Match | None:
        """The first rule (by name) whose conditions all hold."""
        for rule in self._index.get((facts.workflow, stage), ()):
            found = rule.match(facts)
            if found is not None:
                return found
        return None

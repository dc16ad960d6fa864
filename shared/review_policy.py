"""Review gates in policy: queues (owner, SLA, timeout and what a timeout does) and rules (a stage,
a queue, and declarative conditions). Part of the policy schema (`shared.policy`); no code, no eval.

    review_queues:
      payments:   {owner: payments-ops, sla_s: 300, timeout_s: 900, on_timeout: escalate,
                   escalate_to: payments-leads, approvals_required: 2}
    review_rules:
      large-refund:
        stage: pre
        queue: payments
        when: {workflow: {in: [refunds]}, metadata: {amount: {gt: 500}}}

A rule matches when every condition in `when` holds; a condition holds when every operator in it
holds. A metadata field the request does not carry never matches.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

QueueName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
Scalar = str | int | float | bool


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Stage(StrEnum):
    PRE = "pre"  # before any model is called
    POST = "post"  # before the model's output reaches the agent


class TimeoutAction(StrEnum):
    REJECT = "reject"
    APPROVE = "approve"
    ESCALATE = "escalate"  # move to `escalate_to`, whose own timeout applies from then


class QueueSpec(_Spec):
    owner: str = Field(min_length=1, max_length=128, description="the team that answers for the queue")
    sla_s: int = Field(gt=0, description="seconds until a pending review is late")
    timeout_s: int = Field(gt=0, description="seconds until the timeout action is taken")
    on_timeout: TimeoutAction  # required: undefined timeout behaviour is not allowed
    escalate_to: QueueName | None = None
    approvals_required: Literal[1, 2] = 1  # 2: two distinct reviewers (four eyes)

    @model_validator(mode="after")
    def _escalation_has_a_target(self) -> QueueSpec:
        if self.on_timeout is TimeoutAction.ESCALATE and self.escalate_to is None:
            raise ValueError("on_timeout: escalate needs escalate_to")
        if self.on_timeout is not TimeoutAction.ESCALATE and self.escalate_to is not None:
            raise ValueError(f"escalate_to is only used with on_timeout: escalate, not {self.on_timeout}")
        return self

    @property
    def timeout_action(self) -> str:
        """What the deadline does, as reviewers and operators are shown it: `escalate -> queue`."""
        return self.on_timeout.value + (f" -> {self.escalate_to}" if self.escalate_to else "")


class Condition(_Spec):
    """Operators on one value; all that are given must hold."""

    equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in", min_length=1)
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    regex: str | None = Field(default=None, max_length=1000)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _has_an_operator(self) -> Condition:
        if all(getattr(self, f) is None for f in type(self).model_fields):
            raise ValueError("a condition needs at least one of equals, in, gt, ge, lt, le, regex")
        return self


class When(_Spec):
    """The fields a rule may test. A bare value means `equals`."""

    workflow: Condition | None = None
    agent: Condition | None = None
    provider: Condition | None = None  # the planned first tier's
    model: Condition | None = None
    metadata: dict[str, Condition] = Field(default_factory=dict)
    estimated_tokens: Condition | None = None  # prompt estimate + max output tokens
    estimated_cost_usd: Condition | None = None  # at the planned first tier's prices

    @model_validator(mode="before")
    @classmethod
    def _bare_values_mean_equals(cls, data):
        if not isinstance(data, dict):
            return data

        def wrap(v):
            return v if v is None or isinstance(v, dict) else {"equals": v}

        out = {k: (v if k == "metadata" else wrap(v)) for k, v in data.items()}
        if isinstance(out.get("metadata"), dict):
            out["metadata"] = {k: wrap(v) for k, v in out["metadata"].items()}
        return out


class RuleSpec(_Spec):
    stage: Stage
    queue: QueueName
    when: When = When()
    description: str = ""


def workflows_matched(rule: RuleSpec, workflows) -> list[str]:
    """The workflows a rule's `workflow` condition can match (all, without one)."""
    cond = rule.when.workflow
    if cond is None:
        return list(workflows)
    pattern = re.compile(cond.regex) if cond.regex else None
    return [
        w
        for w in workflows
        if (cond.equals is None or w == cond.equals)
        and (cond.in_ is None or w in cond.in_)
        and (pattern is None or pattern.search(w))
        and cond.gt is None
        and cond.ge is None
        and cond.lt is None
        and cond.le is None
    ]


def check_review_policy(
    queues: dict[str, QueueSpec], rules: dict[str, RuleSpec], passthrough: set[str], streaming: set[str]
) -> list[str]:
    """Cross-references: rules name declared queues; escalation targets exist and end somewhere;
    no reviewed workflow passes through to providers when the control plane is unreachable (that
    would skip the review); no workflow whose output a post rule holds streams (its chunks would
    reach the agent before the reviewer)."""
    problems = []
    for name, rule in rules.items():
        if rule.queue not in queues:
            problems.append(f"review_rules.{name}.queue: no review queue named {rule.queue!r}")
        for workflow in workflows_matched(rule, sorted(passthrough)):
            problems.append(
                f"review_rules.{name}.when.workflow: workflow {workflow!r} has degradation: passthrough,"
                " which would skip this review while the control plane is unreachable; make it fail_closed"
            )
        if rule.stage is Stage.POST:
            for workflow in workflows_matched(rule, sorted(streaming)):
                problems.append(
                    f"review_rules.{name}.when.workflow: workflow {workflow!r} streams (streaming: true,"
                    " the default), but this post-stage rule holds its output for review before the agent"
                    " sees it, and a stream cannot be held (set streaming: false on it)"
                )
    for name, queue in queues.items():
        if queue.escalate_to is None:
            continue
        if queue.escalate_to not in queues:
            problems.append(f"review_queues.{name}.escalate_to: no review queue named {queue.escalate_to!r}")
            continue
        seen, at = [name], queue.escalate_to
        while at is not None and at in queues and at not in seen:
            seen.append(at)
            at = queues[at].escalate_to
        if at in seen:
            problems.append(
                f"review_queues.{name}.escalate_to: escalation loops ({' -> '.join([*seen, at])});"
                " the chain must end in a queue that rejects or approves on timeout"
            )
    return problems

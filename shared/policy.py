"""The policy schema (providers, workflows and their tiers, budgets) and its loader.

Policy is declared in YAML files under `config/`; every file may hold any of the top-level
sections and they are merged by name. The whole document is validated at once so that a
tier naming a missing provider is as much an error as a negative timeout, and every error
names its file and its path inside it. The validated document travels to services as JSON
(see `shared.live_config`).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import orjson
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from shared import names, tokens
from shared.contracts import Degradation
from shared.settings import Settings

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
# A workflow name is a NATS subject token (sb.<env>.invoke.<workflow>): no dots.
WorkflowName = Annotated[str, StringConstraints(pattern=names.WORKFLOW_PATTERN.pattern)]
# An agent name is a subject token too (sb.<env>.agent.<agent>.invoke.<workflow>).
AgentName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
SECTIONS = ("providers", "workflows", "agents")
_ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Deployment:
    """What policy may name, fixed by the deployment's settings rather than by policy: the
    environment variables a provider key may come from and the hosts a base_url may reach."""

    key_envs: frozenset[str]
    hosts: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Deployment:
        settings = settings or Settings()
        return cls(frozenset(settings.provider_key_envs), tuple(h.lower() for h in settings.provider_hosts))

    def allows_host(self, host: str) -> bool:
        host = host.lower()
        return any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in self.hosts)

    def problems(self, providers: dict[str, ProviderSpec]) -> list[str]:
        out = []
        for pname, provider in providers.items():
            if provider.api_key_env is not None and provider.api_key_env not in self.key_envs:
                out.append(
                    f"providers.{pname}.api_key_env: {provider.api_key_env!r} is not a provider key "
                    f"variable this deployment allows (allowed by SB_PROVIDER_KEY_ENVS: "
                    f"{', '.join(sorted(self.key_envs)) or 'none'})"
                )
            host = urlsplit(provider.base_url).hostname or ""
            if not self.allows_host(host):
                out.append(
                    f"providers.{pname}.base_url: host {host!r} is not one this deployment allows "
                    f"(allowed by SB_PROVIDER_HOSTS: {', '.join(self.hosts) or 'none'})"
                )
        return out


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderKind(StrEnum):
    OPENAI = "openai"  # OpenAI chat completions; also vLLM, Ollama and other compatible servers
    ANTHROPIC = "anthropic"  # Anthropic Messages API


class Quota(Spec):
    rpm: int | None = Field(default=None, gt=0, description="requests per minute")
    tpm: int | None = Field(default=None, gt=0, description="tokens per minute")


class ModelSpec(Spec):
    input_usd_per_mtok: float = Field(default=0.0, ge=0)
    output_usd_per_mtok: float = Field(default=0.0, ge=0)
    quota: Quota = Quota()
    tokenizer: str | None = None


class CircuitSpec(Spec):
    failures: int = Field(default=5, gt=0, description="consecutive failures that open it")
    open_s: float = Field(default=30.0, gt=0, description="how long it stays open")


class CooldownSpec(Spec):
    """What a provider 429 does: route around that provider/model for a while."""

    enabled: bool = True
    default_s: float = Field(default=5.0, ge=0, description="when the 429 has no Retry-After")
    max_s: float = Field(default=300.0, gt=0, description="cap on a Retry-After")


class ProviderSpec(Spec):
    kind: ProviderKind
    base_url: str = Field(pattern=r"^https?://")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    models: dict[Name, ModelSpec] = Field(min_length=1)
    quota: Quota = Quota()
    circuit: CircuitSpec = CircuitSpec()
    cooldown: CooldownSpec = CooldownSpec()
    max_connections: int = Field(default=256, gt=0)


class TierSpec(Spec):
    provider: Name
    model: Name
    timeout_ms: int = Field(default=30_000, gt=0, le=600_000)
    slo_p99_ms: int | None = Field(default=None, gt=0)


class SessionBudget(Spec):
    tokens: int = Field(gt=0)
    window_s: int = Field(default=3600, gt=0, le=30 * 86400)


class BudgetSpec(Spec):
    max_tokens_per_invocation: int = Field(gt=0)
    session: SessionBudget | None = None
    usd_per_day: float | None = Field(default=None, gt=0)
    on_unavailable: Literal["fail_closed", "allow"] = "fail_closed"
    reservation_ttl_s: int = Field(default=300, gt=0)


class WorkflowSpec(Spec):
    description: str = ""
    tiers: list[TierSpec] = Field(min_length=1)
    budget: BudgetSpec
    # What agents do while the control plane is unreachable: fail_closed raises at once;
    # passthrough calls the tiers' providers directly, unenforced, recorded and uploaded later.
    degradation: Degradation = Degradation.FAIL_CLOSED
    owner: str | None = None


class AgentBudget(Spec):
    """An agent's own limits, reserved together with the workflow's and session's (all or none)."""

    tokens: int | None = Field(default=None, gt=0, description="tokens per rolling window")
    window_s: int = Field(default=3600, gt=0, le=30 * 86400)
    usd_per_day: float | None = Field(default=None, gt=0)


class AgentSpec(Spec):
    """What one agent may do: the workflows it may invoke and, optionally, its own budget."""

    workflows: list[WorkflowName] = Field(min_length=1)
    budget: AgentBudget | None = None


class Policy(Spec):
    providers: dict[Name, ProviderSpec] = Field(min_length=1)
    workflows: dict[WorkflowName, WorkflowSpec] = Field(min_length=1)
    agents: dict[AgentName, AgentSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _tiers_name_known_models(self, info: ValidationInfo) -> Policy:
        deployment = (info.context or {}).get("deployment") or Deployment.from_settings()
        problems = deployment.problems(self.providers)
        for wname, wf in self.workflows.items():
            for i, tier in enumerate(wf.tiers):
                provider = self.providers.get(tier.provider)
                if provider is None:
                    problems.append(
                        f"workflows.{wname}.tiers.{i}.provider: no provider named {tier.provider!r}"
                    )
                elif tier.model not in provider.models:
                    problems.append(
                        f"workflows.{wname}.tiers.{i}.model: "
                        f"provider {tier.provider!r} has no model {tier.model!r}"
                    )
            if len(wf.tiers) < 2:
                problems.append(f"workflows.{wname}.tiers: a workflow needs at least one fallback tier")
            worst_s = sum(t.timeout_ms for t in wf.tiers) / 1000
            if wf.budget.reservation_ttl_s <= worst_s:
                problems.append(
                    f"workflows.{wname}.budget.reservation_ttl_s: {wf.budget.reservation_ttl_s}s must exceed "
                    f"the chain's worst case of {worst_s:g}s (the sum of tier timeouts), "
                    "or usage goes uncounted"
                )
        for aname, agent in self.agents.items():
            for i, wname in enumerate(agent.workflows):
                if wname not in self.workflows:
                    problems.append(f"agents.{aname}.workflows.{i}: no workflow named {wname!r}")
        for pname, provider in self.providers.items():
            for mname, model in provider.models.items():
                if model.tokenizer is not None and model.tokenizer not in tokens.ESTIMATORS:
                    problems.append(
                        f"providers.{pname}.models.{mname}.tokenizer: unknown estimator {model.tokenizer!r}; "
                        f"known: {', '.join(sorted(tokens.ESTIMATORS))}"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def warnings(self) -> list[str]:
        """Legal but risky choices, reported by `sbctl config validate`."""
        out = []
        for wname, wf in self.workflows.items():
            if len({t.provider for t in wf.tiers}) == 1:
                out.append(
                    f"workflows.{wname}.tiers: every tier is at provider {wf.tiers[0].provider!r};"
                    " a provider outage leaves no path"
                )
        return out

    def checksum(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()

    def canonical_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


@dataclass
class PolicyProblem:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


@dataclass
class LoadResult:
    policy: Policy | None
    problems: list[PolicyProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.policy is not None and not self.problems


class PolicyLoadError(Exception):
    def __init__(self, problems: list[PolicyProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def expand_env(text: str) -> str:
    """`${VAR}` and `${VAR:-default}` from the loading process's environment (the default also
    when VAR is empty, as in a shell)."""
    return _ENV_REF.sub(lambda m: os.environ.get(m.group(1)) or m.group(2) or "", text)


def load_dir(directory: str | Path) -> LoadResult:
    """Read, merge and validate every `*.yaml`/`*.yml` file in `directory`."""
    root = Path(directory)
    if not root.is_dir():
        return LoadResult(None, [PolicyProblem(str(root), "", "not a directory")])
    files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        return LoadResult(None, [PolicyProblem(str(root), "", "no *.yaml files")])
    merged: dict[str, dict] = {s: {} for s in SECTIONS}
    origin: dict[tuple[str, str], str] = {}
    problems: list[PolicyProblem] = []
    for path in files:
        try:
            doc = yaml.safe_load(expand_env(path.read_text())) or {}
        except yaml.YAMLError as exc:
            problems.append(PolicyProblem(str(path), "", f"not valid YAML: {exc}"))
            continue
        if not isinstance(doc, dict):
            problems.append(PolicyProblem(str(path), "", "the file must be a mapping of sections"))
            continue
        for section, entries in doc.items():
            if section not in SECTIONS:
                problems.append(
                    PolicyProblem(
                        str(path), str(section), f"unknown section; expected one of {', '.join(SECTIONS)}"
                    )
                )
                continue
            if not isinstance(entries, dict):
                problems.append(PolicyProblem(str(path), section, "must be a mapping of names"))
                continue
            for name, body in entries.items():
                key = (section, str(name))
                if key in origin:
                    problems.append(
                        PolicyProblem(str(path), f"{section}.{name}", f"also defined in {origin[key]}")
                    )
                    continue
                origin[key] = str(path)
                merged[section][str(name)] = body
    if problems:
        return LoadResult(None, problems, files=[str(f) for f in files])
    return _validate(merged, origin, [str(f) for f in files])


def _validate(doc: dict, origin: dict[tuple[str, str], str], files: list[str]) -> LoadResult:
    try:
        policy = Policy.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = [str(p) for p in err["loc"]]
            msg = err["msg"].removeprefix("Value error, ")
            if len(loc) >= 2 and (loc[0], loc[1]) in origin:
                problems.append(PolicyProblem(origin[(loc[0], loc[1])], ".".join(loc), msg))
            elif not loc:  # whole-document checks carry their own paths
                for part in msg.split("; "):
                    path, _, text = part.partition(": ")
                    bits = path.split(".")
                    file = origin.get((bits[0], bits[1]), "") if len(bits) > 1 else ""
                    problems.append(PolicyProblem(file or "(policy)", path, text))
            else:
                problems.append(PolicyProblem("(policy)", ".".join(loc), msg))
        return LoadResult(None, problems, files=files)
    return LoadResult(policy, [], policy.warnings(), files)


def load_dir_or_raise(directory: str | Path) -> Policy:
    result = load_dir(directory)
    if not result.ok:
        raise PolicyLoadError(result.problems)
    assert result.policy is not None
    return result.policy

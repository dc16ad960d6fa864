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
from collections.abc import Mapping
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
from shared.review_policy import QueueName, QueueSpec, RuleSpec, check_review_policy
from shared.settings import Settings

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
# A workflow name is a NATS subject token (sb.<env>.invoke.<workflow>): no dots.
WorkflowName = Annotated[str, StringConstraints(pattern=names.WORKFLOW_PATTERN.pattern)]
# An agent name is a subject token too (sb.<env>.agent.<agent>.invoke.<workflow>).
AgentName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
SECTIONS = ("providers", "workflows", "agents", "review_queues", "review_rules")
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

    def problems(self, providers: dict) -> list[tuple[str, str]]:
        """(path, message) for every key variable or host this deployment does not allow; takes
        validated specs or the raw document's provider mappings (so that load_dir reports these
        along with every other problem)."""
        out = []
        for pname, provider in providers.items():
            key_env, base_url = _field(provider, "api_key_env"), _field(provider, "base_url")
            if isinstance(key_env, str) and key_env not in self.key_envs:
                out.append(
                    (
                        f"providers.{pname}.api_key_env",
                        f"{key_env!r} is not a provider key variable this deployment allows "
                        f"(allowed by SB_PROVIDER_KEY_ENVS: {', '.join(sorted(self.key_envs)) or 'none'})",
                    )
                )
            if not isinstance(base_url, str):
                continue
            host = urlsplit(base_url).hostname or ""
            if not self.allows_host(host):
                out.append(
                    (
                        f"providers.{pname}.base_url",
                        f"host {host!r} is not one this deployment allows "
                        f"(allowed by SB_PROVIDER_HOSTS: {', '.join(self.hosts) or 'none'})",
                    )
                )
        return out


def _field(spec: object, name: str) -> object:
    return spec.get(name) if isinstance(spec, dict) else getattr(spec, name, None)


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
    # Whether agents may stream answers. A post-stage review holds the output before the agent
    # sees it, so a workflow any post rule can match must say false.
    streaming: bool = True


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
    review_queues: dict[QueueName, QueueSpec] = Field(default_factory=dict)
    review_rules: dict[Name, RuleSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _tiers_name_known_models(self, info: ValidationInfo) -> Policy:
        deployment = (info.context or {}).get("deployment") or Deployment.from_settings()
        problems = deployment.problems(self.providers) + cross_reference_problems(
            self.model_dump(mode="json")
        )
        passthrough = {w for w, spec in self.workflows.items() if spec.degradation is Degradation.PASSTHROUGH}
        streaming = {w for w, spec in self.workflows.items() if spec.streaming}
        reviews = check_review_policy(self.review_queues, self.review_rules, passthrough, streaming)
        problems += [tuple(p.split(": ", 1)) for p in reviews]
        if problems:
            raise ValueError("; ".join(f"{path}: {message}" for path, message in problems))
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


def cross_reference_problems(doc: dict) -> list[tuple[str, str]]:
    """Checks across entries (a tier names a known provider and model, a fallback exists, the
    reservation outlives the chain, tokenizers exist), as (path, message) pairs. Works on a
    document whose fields may be invalid too, so that every problem is reported in one pass."""
    problems: list[tuple[str, str]] = []
    providers = doc.get("providers") if isinstance(doc.get("providers"), dict) else {}
    workflows = doc.get("workflows") if isinstance(doc.get("workflows"), dict) else {}
    default_timeout = TierSpec.model_fields["timeout_ms"].default
    default_ttl = BudgetSpec.model_fields["reservation_ttl_s"].default
    for wname, wf in workflows.items():
        tiers = wf.get("tiers") if isinstance(wf, dict) else None
        if not isinstance(tiers, list):
            continue
        for i, tier in enumerate(tiers):
            if not isinstance(tier, dict):
                continue
            pname, mname = tier.get("provider"), tier.get("model")
            provider = providers.get(pname) if isinstance(pname, str) else None
            if provider is None:
                problems.append((f"workflows.{wname}.tiers.{i}.provider", f"no provider named {pname!r}"))
            elif isinstance(provider, dict) and mname not in (provider.get("models") or {}):
                problems.append(
                    (f"workflows.{wname}.tiers.{i}.model", f"provider {pname!r} has no model {mname!r}")
                )
        if len(tiers) < 2:
            problems.append((f"workflows.{wname}.tiers", "a workflow needs at least one fallback tier"))
        budget = wf.get("budget") if isinstance(wf.get("budget"), dict) else {}
        try:
            worst_s = sum(t.get("timeout_ms", default_timeout) for t in tiers) / 1000
            ttl = budget.get("reservation_ttl_s", default_ttl)
            if ttl <= worst_s:
                problems.append(
                    (
                        f"workflows.{wname}.budget.reservation_ttl_s",
                        f"{ttl}s must exceed the chain's worst case of {worst_s:g}s (the sum of tier "
                        "timeouts), or usage goes uncounted",
                    )
                )
        except (TypeError, AttributeError):
            pass  # a field error already reported by the schema
    agents = doc.get("agents") if isinstance(doc.get("agents"), dict) else {}
    for aname, agent in agents.items():
        allowed = agent.get("workflows") if isinstance(agent, dict) else None
        for i, wname in enumerate(allowed if isinstance(allowed, list) else []):
            if wname not in workflows:
                problems.append((f"agents.{aname}.workflows.{i}", f"no workflow named {wname!r}"))
    for pname, provider in providers.items():
        models = provider.get("models") if isinstance(provider, dict) else None
        for mname, model in (models or {}).items() if isinstance(models, dict) else ():
            tokenizer = model.get("tokenizer") if isinstance(model, dict) else None
            if tokenizer is not None and tokenizer not in tokens.ESTIMATORS:
                problems.append(
                    (
                        f"providers.{pname}.models.{mname}.tokenizer",
                        f"unknown estimator {tokenizer!r}; known: {', '.join(sorted(tokens.ESTIMATORS))}",
                    )
                )
    return problems


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
    document: dict | None = None  # as written, variables unexpanded: what a version carries

    @property
    def ok(self) -> bool:
        return self.policy is not None and not self.problems


class PolicyLoadError(Exception):
    def __init__(self, problems: list[PolicyProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def expand(value: object, environ: Mapping[str, str] | None = None, path: str = ""):
    """`${VAR}` and `${VAR:-default}` in every string of a document, from `environ` (this
    process's environment by default); the default also applies when VAR is empty, as in a
    shell. Returns (expanded document, problems); a variable that is unset with no default is a
    problem, never an empty string.

    Expansion happens where the policy is used: each service expands the version it loads in its
    own environment (a container's addresses, not the operator's laptop's), and sbctl expands
    with the operator's environment only to validate. Versions carry the document unexpanded."""
    environ = os.environ if environ is None else environ
    problems: list[tuple[str, str]] = []

    def walk(node: object, where: str) -> object:
        if isinstance(node, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{where}.{i}") for i, v in enumerate(node)]
        if isinstance(node, str):

            def one(m: re.Match) -> str:
                value = environ.get(m.group(1))
                if value:
                    return value
                if m.group(2) is not None:
                    return m.group(2)
                problems.append((where, f"${{{m.group(1)}}} is not set and has no default"))
                return ""

            return _ENV_REF.sub(one, node)
        return node

    return walk(value, path), problems


def expand_or_raise(document: dict) -> dict:
    """The document with its variables expanded here; ValueError naming every unset one."""
    expanded, problems = expand(document)
    if problems:
        raise ValueError("; ".join(f"{path}: {message}" for path, message in problems))
    return expanded


def document_checksum(document: dict) -> str:
    """The checksum of a policy document as written (variables unexpanded): the same content
    promoted from staging to production has the same checksum."""
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


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
            doc = yaml.safe_load(path.read_text()) or {}
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


def _validate(document: dict, origin: dict[tuple[str, str], str], files: list[str]) -> LoadResult:
    """Every problem at once: unset variables, field errors and cross-references."""

    def problem(path: str, message: str) -> PolicyProblem:
        owners = [f for (s, n), f in origin.items() if path == f"{s}.{n}" or path.startswith(f"{s}.{n}.")]
        return PolicyProblem(owners[0] if len(owners) == 1 else "(policy)", path, message)

    expanded, unset = expand(document)
    problems = [problem(path, message) for path, message in unset]
    policy = None
    try:
        policy = Policy.model_validate(expanded)
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            if err["loc"]:  # whole-document checks are reported below, with their own paths
                problems.append(problem(".".join(str(p) for p in err["loc"]), err["msg"]))
            else:  # ... except the review gates' cross-references, which only the model makes
                for part in err["msg"].removeprefix("Value error, ").split("; "):
                    path, _, message = part.partition(": ")
                    if path.startswith(("review_rules.", "review_queues.")):
                        problems.append(problem(path, message))
    problems += [problem(path, message) for path, message in cross_reference_problems(expanded)]
    providers = expanded.get("providers")
    if isinstance(providers, dict):
        deployment = Deployment.from_settings()
        invalid = {p.path for p in problems}  # a value that is malformed is not judged again here
        problems += [
            problem(path, msg) for path, msg in deployment.problems(providers) if path not in invalid
        ]
    if problems:
        return LoadResult(None, problems, files=files, document=document)
    assert policy is not None
    return LoadResult(policy, [], policy.warnings(), files, document)


def load_dir_or_raise(directory: str | Path) -> Policy:
    result = load_dir(directory)
    if not result.ok:
        raise PolicyLoadError(result.problems)
    assert result.policy is not None
    return result.policy

"""The image installs the lock file and only it: every runtime dependency pinned, no dev tools,
and the versions the tests run on are the locked ones."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "deploy" / "docker" / "requirements.lock"
DOCKERFILE = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SDK_PYPROJECT = tomllib.loads((REPO / "sdk" / "pyproject.toml").read_text())
LOCAL = {"switchboard", "switchboard-sdk"}  # installed from the checkout, never pinned


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not pinned: {line!r}"
            pins[norm(name)] = version
    return pins


def runtime_closure() -> set[str]:
    """Every distribution the runtime dependencies pull in, as installed here (markers applied)."""
    todo = [(Requirement(spec), {""}) for spec in PYPROJECT["project"]["dependencies"]]
    seen: set[tuple[str, str]] = set()
    while todo:
        req, extras = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        wanted = {"", *req.extras}
        if {(norm(req.name), e) for e in wanted} <= seen:
            continue
        seen |= {(norm(req.name), e) for e in wanted}
        todo += [(Requirement(r), wanted) for r in metadata.requires(req.name) or []]
    return {name for name, _ in seen}


def test_the_lock_is_the_runtime_closure_and_no_dev_tool():
    pins = locked()
    assert set(pins) == runtime_closure() - LOCAL
    assert not {"pytest", "ruff", "kubernetes-validate", "pytest-asyncio"} & set(pins)


def test_the_dockerfile_installs_exactly_the_lock():
    assert "pip install --no-deps -r /tmp/requirements.lock" in DOCKERFILE
    assert "COPY deploy/docker/requirements.lock" in DOCKERFILE
    assert "pip install --no-deps ./sdk ." in DOCKERFILE
    assert "[dev]" not in DOCKERFILE and "pyproject.toml" not in DOCKERFILE.split("COPY . .")[0]


def test_the_tests_run_the_locked_versions():
    pins = locked()
    installed = {norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    differ = {
        name: (version, installed.get(name))
        for name, version in pins.items()
        if installed.get(name) != version
    }
    assert differ == {}, "run `make setup` (the lock's pins are its constraints)"


def test_the_server_depends_on_the_sdk_it_ships():
    wanted = [Requirement(spec) for spec in PYPROJECT["project"]["dependencies"]]
    sdk = next(r for r in wanted if norm(r.name) == "switchboard-sdk")
    assert sdk.specifier.contains(SDK_PYPROJECT["project"]["version"])

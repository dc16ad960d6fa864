"""Write deploy/docker/requirements.lock: every runtime dependency of Switchboard, pinned.

    make lock        (= python deploy/docker/lock.py)

pip resolves the project's runtime dependencies (pyproject.toml, no dev extras, and those of the
agent SDK in sdk/, which the project depends on) as a fresh install would, and the exact versions
are written down; the two local distributions themselves are not pinned. The image installs exactly these
(`pip install --no-deps -r requirements.lock`), and `make setup` installs the development
virtualenv under the same pins (as constraints), so the tests run the versions the image ships.
Resolved for Linux and CPython 3.11, the image's platform.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCK = Path(__file__).resolve().parent / "requirements.lock"


def resolve() -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
        subprocess.run([*pip, "--report", str(report), str(REPO / "sdk"), str(REPO)], check=True)
        installs = json.loads(report.read_text())["install"]
    pins = {(i["metadata"]["name"], i["metadata"]["version"]) for i in installs if not i.get("is_direct")}
    return sorted(pins, key=lambda p: p[0].lower())


def main() -> None:
    pins = resolve()
    lines = [
        "# Runtime dependencies of Switchboard, pinned: written by `make lock` (deploy/docker/lock.py).",
        "# The image installs exactly these; `make setup` uses them as constraints. Do not edit by hand.",
        *(f"{name}=={version}" for name, version in pins),
    ]
    LOCK.write_text("\n".join(lines) + "\n")
    print(f"{LOCK.relative_to(REPO)}: {len(pins)} packages")


if __name__ == "__main__":
    main()

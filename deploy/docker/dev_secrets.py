"""Development secrets for docker compose, made on first run and kept (never committed).

    python deploy/docker/dev_secrets.py /secrets

Writes, where missing: one NATS password per user and the server configuration that uses them
(nats/), a Redis ACL file with the `switchboard` user (redis/), and the PostgreSQL password
(postgres/). Files are readable by the containers' users: this is for a development machine;
production mounts its own secrets (see deploy/k8s/README.md).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GENERATE = HERE.parent / "nats" / "generate.py"
NATS_SERVER_CONF = """# Generated for docker compose by deploy/docker/dev_secrets.py.
listen: "0.0.0.0:4222"
http: "0.0.0.0:8222"
jetstream { store_dir: "/data" }
include "auth.conf"
"""


def _write_once(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o755)
    if not path.exists():
        path.write_text(text)
    path.chmod(0o644)
    return path.read_text()


def main(root: Path) -> None:
    nats = root / "nats"
    auth = subprocess.run(
        [sys.executable, str(GENERATE), "--credentials-dir", str(nats), "--create", "--agent", "demo-agent"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (nats / "auth.conf").write_text(auth)
    for path in nats.iterdir():
        path.chmod(0o644)
    _write_once(nats / "server.conf", NATS_SERVER_CONF)
    redis_password = _write_once(root / "redis" / "password", secrets.token_urlsafe(24) + "\n").strip()
    _write_once(
        root / "redis" / "users.acl",
        f"user default off\nuser switchboard on >{redis_password} ~* &* +@all\n",
    )
    _write_once(root / "postgres" / "password", secrets.token_urlsafe(24) + "\n")
    print(f"dev secrets ready in {root}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".secrets"))

"""Passwords and TLS for the infrastructure are settings that services really use: a Redis with
an ACL user and no default user, a NATS server that speaks only TLS (certificate from a CA this
test makes) and requires a password. Each server is this test's own, on another port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.helpers import free_port
from tests.support.infra import Infra
from tests.support.nats_server import AuthNats
from tests.support.stack import Stack, copy_policy

pytestmark = pytest.mark.timeout(60)


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


@pytest.fixture
def acl_redis(tmp_path):
    """redis-server with the default user off and one ACL user `switchboard`."""
    password = "redis-acl-secret-1"
    port = free_port()
    conf = tmp_path / "redis.conf"
    conf.write_text(
        f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndir {tmp_path}\n'
        f"user default off\nuser switchboard on >{password} ~* &* +@all\n"
    )
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", str(conf)], stdout=subprocess.DEVNULL
    )
    wait_port(port, proc, "redis-server")
    (tmp_path / "redis-password").write_text(password + "\n")
    yield f"redis://127.0.0.1:{port}/0", tmp_path / "redis-password"
    proc.terminate()
    proc.wait(timeout=10)


async def test_services_use_the_redis_acl_user_and_its_password_file(stack, acl_redis):
    url, password_file = acl_redis
    await stack.start(
        "budget",
        budget={"redis_url": url, "redis_username": "switchboard", "redis_password_file": str(password_file)},
    )
    assert (await stack["budget"].ready())["redis"] == "ok"

    await stack.start("router", router={"redis_url": url})  # no credentials: refused by Redis
    assert (await stack["router"].ready())["redis"].startswith("down")


def make_certificates(root: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed (deploy/local/infra.sh installs it)", pytrace=False)
    files = {n: root / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "ext.cnf")}
    files["ext.cnf"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", str(files["ca.key"]), "-out", str(files["ca.crt"]))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(files["server.key"]), "-out", str(files["server.csr"]))  # fmt: skip
    run("x509", "-req", "-in", str(files["server.csr"]), "-CA", str(files["ca.crt"]),
        "-CAkey", str(files["ca.key"]), "-CAcreateserial", "-days", "1",
        "-extfile", str(files["ext.cnf"]), "-out", str(files["server.crt"]))  # fmt: skip
    return files


class TlsNats(AuthNats):
    """The generated users behind TLS only."""

    def __init__(self, root: Path, certs: dict[str, Path]) -> None:
        super().__init__(root, [])
        self.certs = certs

    def server_config(self) -> str:
        return (
            super().server_config()
            + f'tls {{ cert_file: "{self.certs["server.crt"]}", key_file: "{self.certs["server.key"]}" }}\n'
        )


async def test_services_reach_nats_over_tls_with_the_ca_setting(
    infra, env_name, simulator, tmp_path, monkeypatch
):
    certs = make_certificates(tmp_path)
    (tmp_path / "nats").mkdir()
    server = TlsNats(tmp_path / "nats", certs).start()
    monkeypatch.setenv("SB_NATS_CREDENTIALS_DIR", str(server.credentials))
    stack = Stack(
        Infra(server.url, infra.redis_url, infra.database_url), env_name, copy_policy(tmp_path), simulator
    )
    try:
        with pytest.raises(Exception, match=r"(?i)cannot reach NATS"):  # the server's CA is not trusted
            await stack.start("router")
        monkeypatch.setenv("SB_NATS_TLS_CA", str(certs["ca.crt"]))
        await stack.start("router")
        assert (await stack["router"].ready())["nats"] == "ok"
    finally:
        await stack.close()
        server.stop()

"""Switchboard with NATS authentication on: a nats-server of the tests' own with the generated
users, and every in-process service, client and sbctl call authenticating as its role."""

from __future__ import annotations

import pytest

from tests.support.infra import Infra
from tests.support.nats_server import AuthNats
from tests.support.stack import Stack, copy_policy

AGENTS = ["alice", "bob"]


@pytest.fixture(scope="session")
def auth_nats(tmp_path_factory):
    server = AuthNats(tmp_path_factory.mktemp("auth-nats"), AGENTS).start()
    yield server
    server.stop()


@pytest.fixture
async def secure_stack(infra, env_name, simulator, tmp_path, auth_nats, monkeypatch):
    """Like `stack`, on the authenticating server; SB_NATS_CREDENTIALS_DIR points at the users'
    password files, so each process connects as its own role."""
    monkeypatch.setenv("SB_NATS_CREDENTIALS_DIR", str(auth_nats.credentials))
    secured = Infra(auth_nats.url, infra.redis_url, infra.database_url)
    s = Stack(secured, env_name, copy_policy(tmp_path), simulator)
    yield s
    await s.close()

"""Policy cannot choose where keys come from or where they go: the key variables and base_url
hosts are the deployment's settings; policy naming others is rejected at validation (sbctl)
and at load (a version written straight into the bucket), with the reason."""

from __future__ import annotations

import time

import pytest
import yaml

from shared import names
from shared.live_config import VersionDoc
from shared.policy import Deployment, Policy
from shared.settings import Settings
from tests.support.helpers import run_sbctl
from tests.support.stack import operator_connect, wait_for

pytestmark = pytest.mark.timeout(60)


def edit_providers(stack, tmp_path, change) -> str:
    target = tmp_path / "edited"
    target.mkdir()
    for path in stack.policy_dir.iterdir():
        doc = yaml.safe_load(path.read_text())
        if "providers" in doc:
            change(doc["providers"]["openai-sim"])
        (target / path.name).write_text(yaml.safe_dump(doc))
    return str(target)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("api_key_env", "SB_DATABASE_URL", "'SB_DATABASE_URL' is not a provider key variable"),
        ("base_url", "https://collector.example.net/v1", "host 'collector.example.net' is not one"),
    ],
)
async def test_validation_rejects_a_variable_or_host_the_deployment_does_not_allow(
    stack, tmp_path, field, value, reason
):
    edited = edit_providers(stack, tmp_path, lambda p: p.update({field: value}))

    code, out, _ = await run_sbctl(stack.infra, "config", "validate", edited)

    assert code == 1
    assert f"providers.openai-sim.{field}: " in out and reason in out, out


async def test_the_deployment_can_widen_the_allow_lists(stack, tmp_path, monkeypatch):
    edited = edit_providers(stack, tmp_path, lambda p: p.update({"base_url": "https://llm.corp.example/v1"}))
    monkeypatch.setenv("SB_PROVIDER_HOSTS", "127.0.0.1,*.corp.example")

    code, out, err = await run_sbctl(stack.infra, "config", "validate", edited)

    assert code == 0, out + err
    assert Deployment.from_settings(Settings()).allows_host("llm.corp.example")
    assert not Deployment.from_settings(Settings()).allows_host("corp.example.evil.net")


async def test_a_version_naming_another_variable_is_rejected_at_load(running):
    await running.apply()
    policy = running.policy()
    policy["providers"]["openai-sim"]["api_key_env"] = "SB_DATABASE_URL"
    with pytest.raises(ValueError, match="SB_DATABASE_URL"):
        Policy.model_validate(policy)  # what sbctl apply would have refused
    doc = VersionDoc(
        version=2, applied_at=time.time(), applied_by="mallory", checksum="0" * 64, policy=policy
    )
    nc = await operator_connect(running.infra.nats_url)
    try:
        kv = await nc.jetstream().key_value(names.config_bucket(running.env))
        await kv.put(names.CONFIG_KEY, doc.model_dump_json().encode())
    finally:
        await nc.close()

    gateway = running["gateway"]
    await wait_for(lambda: gateway.config.last_error, message="the gateway to reject the version")
    assert "SB_DATABASE_URL" in gateway.config.last_error
    assert gateway.config_version == "1"
    assert gateway.providers.get("openai-sim")._key == "sk-test-openai"  # still the allowed variable's

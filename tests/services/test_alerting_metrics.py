"""The gauges the alerts read: daily spend ceilings from the policy, quota headroom and limits,
circuit state. Values are compared with the policy the test applied."""

from __future__ import annotations

import pytest

from shared import keys
from tests.support.helpers import sample
from tests.support.stack import wait_for

pytestmark = pytest.mark.timeout(60)


async def test_budget_exports_the_daily_spend_ceilings_of_the_active_policy(stack):
    await stack.start("budget")
    assert sample("switchboard_budget_spend_ceiling_usd", workflow="support-triage") == 200
    policy = stack.policy()
    policy["workflows"]["support-triage"]["budget"]["usd_per_day"] = 35.5
    await stack.apply(policy)
    assert sample("switchboard_budget_spend_ceiling_usd", workflow="support-triage") == 35.5


async def test_router_exports_quota_headroom_limits_and_circuit_state(stack, redis):
    await stack.start("router", router={"headroom_interval_s": 0.05})
    policy = stack.policy()
    rpm, tpm = (
        policy["providers"]["openai-sim"]["quota"]["rpm"],
        policy["providers"]["openai-sim"]["quota"]["tpm"],
    )
    model_rpm = policy["providers"]["openai-sim"]["models"]["gpt-sim-large"]["quota"]["rpm"]
    expected = {  # nothing used this minute in this env: headroom is the whole limit
        ("switchboard_quota_request_limit", "*"): rpm,
        ("switchboard_quota_token_limit", "*"): tpm,
        ("switchboard_quota_request_headroom", "*"): rpm,
        ("switchboard_quota_token_headroom", "*"): tpm,
        ("switchboard_quota_request_limit", "gpt-sim-large"): model_rpm,
    }

    def exported() -> dict:
        return {key: sample(key[0], provider="openai-sim", model=key[1]) for key in expected}

    # The registry is per process and routers of earlier tests may linger in it: poll until this
    # router's refresh (every 50 ms) is the last one written.
    await wait_for(lambda: exported() == expected, message="quota limits and headroom exported")
    assert sample("switchboard_circuit_open", provider="openai-sim") == 0
    await redis.set(keys.circuit_open(stack.env, "openai-sim"), "1", px=60_000)  # as the router opens it
    await wait_for(
        lambda: (
            sample("switchboard_circuit_open", provider="openai-sim") == 1
            and sample("switchboard_circuit_open", provider="anthropic-sim") == 0
        ),
        message="the open circuit exported",
    )

"""The provider-state scripts: acquire_tier_v1 (shared, run by gateways as they plan) through
`TierAcquirer`, record_outcome_v1 (the router's) through `ProviderHealth`, against a real Redis
under a key prefix of their own (a fresh SB_ENV), cleaned afterwards."""

from __future__ import annotations

import pytest

from services.router.health import ProviderHealth
from shared import keys
from shared.contracts import AttemptOutcome, TierOutcome
from shared.policy import Policy
from shared.provider_state import TierAcquirer, TierCheck
from tests.support.fallback import steady_minute


@pytest.fixture
async def health(redis, env_name) -> ProviderHealth:
    await steady_minute(redis)  # quota windows are Redis-clock minutes: keep a test inside one
    return ProviderHealth(redis, env=env_name)


@pytest.fixture
async def acquirer(redis, env_name) -> TierAcquirer:
    await steady_minute(redis)
    return TierAcquirer(redis, env=env_name)


def make_policy(p1: dict | None = None, m1: dict | None = None) -> Policy:
    """p1 (models m1, m2) and p2 (model m1); workflow `wf` tiers p1/m1, p1/m2, p2/m1."""
    provider = {
        "kind": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "models": {"m1": dict(m1 or {}), "m2": {}},
        **(p1 or {}),
    }
    return Policy.model_validate(
        {
            "providers": {
                "p1": provider,
                "p2": {"kind": "anthropic", "base_url": "http://127.0.0.1:9/v1", "models": {"m1": {}}},
            },
            "workflows": {
                "wf": {
                    "tiers": [
                        {"provider": "p1", "model": "m1"},
                        {"provider": "p1", "model": "m2"},
                        {"provider": "p2", "model": "m1"},
                    ],
                    "budget": {"max_tokens_per_invocation": 1000},
                }
            },
        }
    )


def tiers(policy: Policy):
    return policy.workflows["wf"].tiers


def outcome(kind: AttemptOutcome, *, provider="p1", model="m1", tokens=0, retry_after_s=None) -> TierOutcome:
    return TierOutcome(
        invocation_id="i-1",
        workflow="wf",
        provider=provider,
        model=model,
        outcome=kind,
        tokens=tokens,
        retry_after_s=retry_after_s,
    )


async def minute(redis) -> bytes:
    seconds, _ = await redis.time()
    return str(int(seconds) // 60).encode()


async def counts(redis, env: str, scope: str) -> dict[bytes, bytes]:
    return await redis.hgetall(keys.quota(env, scope))


def statuses(checks: list[TierCheck]) -> list[tuple[int, str]]:
    return [(c.index, c.status) for c in checks]


# --- acquire_tier_v1 -----------------------------------------------------------------------


async def test_acquire_takes_the_first_tier_and_debits_one_request_from_both_quotas(
    acquirer, redis, env_name
):
    policy = make_policy()

    checks = await acquirer.acquire(policy, tiers(policy), 0)

    assert checks == [TierCheck(0, "ok", "")]
    now = await minute(redis)
    for scope in ("p1", "p1/m1"):
        assert await counts(redis, env_name, scope) == {b"m": now, b"req": b"1", b"tok": b"0"}
        assert 0 < await redis.ttl(keys.quota(env_name, scope)) <= 120
    assert await counts(redis, env_name, "p1/m2") == {}


async def test_acquire_from_a_later_tier_numbers_checks_from_there(acquirer):
    policy = make_policy()

    assert await acquirer.acquire(policy, tiers(policy), 1) == [TierCheck(1, "ok", "")]
    assert await acquirer.acquire(policy, tiers(policy), 2) == [TierCheck(2, "ok", "")]


async def test_blocked_provider_is_skipped_with_its_reason_and_not_debited(health, acquirer, redis, env_name):
    policy = make_policy()
    await health.block("p1", "incident 42")

    checks = await acquirer.acquire(policy, tiers(policy), 0)

    assert checks == [
        TierCheck(0, "blocked", "incident 42"),
        TierCheck(1, "blocked", "incident 42"),
        TierCheck(2, "ok", ""),
    ]
    assert await counts(redis, env_name, "p1") == {}
    assert (await counts(redis, env_name, "p2"))[b"req"] == b"1"

    await health.unblock("p1")
    assert await acquirer.acquire(policy, tiers(policy), 0) == [TierCheck(0, "ok", "")]


async def test_cooldown_skips_only_that_model_with_the_time_left(acquirer, redis, env_name):
    policy = make_policy()
    await redis.set(keys.cooldown(env_name, "p1", "m1"), "429", px=4000)

    checks = await acquirer.acquire(policy, tiers(policy), 0)

    assert statuses(checks) == [(0, "cooldown"), (1, "ok")]
    assert 3000 < int(checks[0].detail) <= 4000


async def test_open_circuit_skips_every_model_of_the_provider(acquirer, redis, env_name):
    policy = make_policy()
    await redis.set(keys.circuit_open(env_name, "p1"), "5", px=30_000)

    checks = await acquirer.acquire(policy, tiers(policy), 0)

    assert statuses(checks) == [(0, "circuit_open"), (1, "circuit_open"), (2, "ok")]
    assert 29_000 < int(checks[0].detail) <= 30_000


async def test_nothing_usable_returns_every_check_and_no_ok(health, acquirer):
    policy = make_policy()
    await health.block("p1", "down")
    await health.block("p2", "down too")

    checks = await acquirer.acquire(policy, tiers(policy), 0)

    assert statuses(checks) == [(0, "blocked"), (1, "blocked"), (2, "blocked")]


async def test_model_rpm_skips_the_tier_once_used_up_without_debiting_it(acquirer, redis, env_name):
    policy = make_policy(m1={"quota": {"rpm": 2}})
    for _ in range(2):
        assert statuses(await acquirer.acquire(policy, tiers(policy), 0)) == [(0, "ok")]

    checks = await acquirer.acquire(policy, tiers(policy), 0)

    assert checks == [
        TierCheck(0, "local_quota", "model requests 2/2 per minute"),
        TierCheck(1, "ok", ""),
    ]
    assert (await counts(redis, env_name, "p1/m1"))[b"req"] == b"2"
    assert (await counts(redis, env_name, "p1"))[b"req"] == b"3"  # two for m1, one for m2


async def test_provider_rpm_skips_every_model_of_the_provider(acquirer):
    policy = make_policy(p1={"quota": {"rpm": 1}})
    assert statuses(await acquirer.acquire(policy, tiers(policy), 0)) == [(0, "ok")]

    checks = await acquirer.acquire(policy, tiers(policy), 0)

    assert checks == [
        TierCheck(0, "local_quota", "provider requests 1/1 per minute"),
        TierCheck(1, "local_quota", "provider requests 1/1 per minute"),
        TierCheck(2, "ok", ""),
    ]


async def test_tokens_reaching_the_model_tpm_skip_the_tier(health, acquirer):
    policy = make_policy(m1={"quota": {"tpm": 100}})
    spec = policy.providers["p1"]
    assert statuses(await acquirer.acquire(policy, tiers(policy), 0)) == [(0, "ok")]
    await health.record(spec, outcome(AttemptOutcome.OK, tokens=99))
    assert statuses(await acquirer.acquire(policy, tiers(policy), 0)) == [(0, "ok")]
    await health.record(spec, outcome(AttemptOutcome.OK, tokens=1))

    checks = await acquirer.acquire(policy, tiers(policy), 0)

    assert checks[0] == TierCheck(0, "local_quota", "model tokens 100/100 per minute")
    assert statuses(checks) == [(0, "local_quota"), (1, "ok")]


async def test_counts_of_a_past_minute_do_not_count(acquirer, redis, env_name):
    policy = make_policy(m1={"quota": {"rpm": 2}})
    old = str(int(await minute(redis)) - 1)
    await redis.hset(keys.quota(env_name, "p1/m1"), mapping={"m": old, "req": 999, "tok": 999_999})

    assert await acquirer.acquire(policy, tiers(policy), 0) == [TierCheck(0, "ok", "")]
    assert await counts(redis, env_name, "p1/m1") == {b"m": await minute(redis), b"req": b"1", b"tok": b"0"}


# --- record_outcome_v1 ---------------------------------------------------------------------


async def test_429_starts_a_cooldown_of_retry_after(health, redis, env_name):
    policy = make_policy()

    result = await health.record(
        policy.providers["p1"], outcome(AttemptOutcome.RATE_LIMITED, retry_after_s=5)
    )

    assert result == (0, False)
    assert 4000 < await redis.pttl(keys.cooldown(env_name, "p1", "m1")) <= 5000
    assert await redis.exists(keys.cooldown(env_name, "p1", "m2")) == 0
    assert await redis.exists(keys.circuit_failures(env_name, "p1")) == 0


async def test_429_without_retry_after_cools_down_for_the_default(health, redis, env_name):
    policy = make_policy(p1={"cooldown": {"default_s": 7}})

    await health.record(policy.providers["p1"], outcome(AttemptOutcome.RATE_LIMITED))

    assert 6000 < await redis.pttl(keys.cooldown(env_name, "p1", "m1")) <= 7000


async def test_retry_after_is_capped_by_max_s(health, redis, env_name):
    policy = make_policy(p1={"cooldown": {"max_s": 10}})

    await health.record(policy.providers["p1"], outcome(AttemptOutcome.RATE_LIMITED, retry_after_s=3600))

    assert 9000 < await redis.pttl(keys.cooldown(env_name, "p1", "m1")) <= 10_000


async def test_429_with_cooldown_disabled_leaves_no_cooldown(health, acquirer, redis, env_name):
    policy = make_policy(p1={"cooldown": {"enabled": False}})

    await health.record(policy.providers["p1"], outcome(AttemptOutcome.RATE_LIMITED, retry_after_s=5))

    assert await redis.exists(keys.cooldown(env_name, "p1", "m1")) == 0
    assert statuses(await acquirer.acquire(policy, tiers(policy), 0)) == [(0, "ok")]


@pytest.mark.parametrize(
    "failure",
    [
        AttemptOutcome.SERVER_ERROR,
        AttemptOutcome.TIMEOUT,
        AttemptOutcome.CONNECTION_ERROR,
        AttemptOutcome.MALFORMED,
    ],
)
async def test_consecutive_failures_open_the_circuit_at_the_threshold(
    health, acquirer, redis, env_name, failure
):
    policy = make_policy(p1={"circuit": {"failures": 3, "open_s": 20}})
    spec = policy.providers["p1"]

    assert await health.record(spec, outcome(failure)) == (1, False)
    assert await health.record(spec, outcome(failure, model="m2")) == (2, False)  # per provider
    assert await redis.exists(keys.circuit_open(env_name, "p1")) == 0
    assert await health.record(spec, outcome(failure)) == (3, True)

    assert 19_000 < await redis.pttl(keys.circuit_open(env_name, "p1")) <= 20_000
    assert 0 < await redis.ttl(keys.circuit_failures(env_name, "p1")) <= 600
    assert statuses(await acquirer.acquire(policy, tiers(policy), 0)) == [
        (0, "circuit_open"),
        (1, "circuit_open"),
        (2, "ok"),
    ]


async def test_a_success_resets_consecutive_failures(health, redis, env_name):
    policy = make_policy(p1={"circuit": {"failures": 3}})
    spec = policy.providers["p1"]
    await health.record(spec, outcome(AttemptOutcome.SERVER_ERROR))
    await health.record(spec, outcome(AttemptOutcome.SERVER_ERROR))

    assert await health.record(spec, outcome(AttemptOutcome.OK, tokens=5)) == (0, False)
    assert await redis.exists(keys.circuit_failures(env_name, "p1")) == 0
    assert await health.record(spec, outcome(AttemptOutcome.SERVER_ERROR)) == (1, False)


@pytest.mark.parametrize("neutral", [AttemptOutcome.CLIENT_ERROR, AttemptOutcome.SKIPPED])
async def test_client_errors_change_neither_circuit_nor_cooldown(health, redis, env_name, neutral):
    policy = make_policy(p1={"circuit": {"failures": 1}})
    spec = policy.providers["p1"]

    assert await health.record(spec, outcome(neutral, retry_after_s=5)) == (0, False)

    assert await redis.exists(keys.cooldown(env_name, "p1", "m1")) == 0
    assert await redis.exists(keys.circuit_open(env_name, "p1")) == 0
    assert await redis.exists(keys.circuit_failures(env_name, "p1")) == 0


async def test_a_429_is_not_a_circuit_failure(health, redis, env_name):
    policy = make_policy(p1={"circuit": {"failures": 1}})

    assert await health.record(policy.providers["p1"], outcome(AttemptOutcome.RATE_LIMITED)) == (0, False)

    assert await redis.exists(keys.circuit_open(env_name, "p1")) == 0


async def test_tokens_are_added_to_this_minutes_provider_and_model_counts(health, acquirer, redis, env_name):
    policy = make_policy()
    spec = policy.providers["p1"]
    await acquirer.acquire(policy, tiers(policy), 0)

    await health.record(spec, outcome(AttemptOutcome.OK, tokens=40))
    await health.record(spec, outcome(AttemptOutcome.OK, tokens=2))

    now = await minute(redis)
    for scope in ("p1", "p1/m1"):
        assert await counts(redis, env_name, scope) == {b"m": now, b"req": b"1", b"tok": b"42"}


async def test_tokens_without_an_acquire_start_a_fresh_minute(health, redis, env_name):
    policy = make_policy()

    await health.record(policy.providers["p1"], outcome(AttemptOutcome.OK, model="m2", tokens=7))

    assert await counts(redis, env_name, "p1/m2") == {b"m": await minute(redis), b"req": b"0", b"tok": b"7"}


async def test_status_reports_what_the_scripts_wrote(health, acquirer, redis, env_name):
    policy = make_policy(
        p1={"quota": {"rpm": 10, "tpm": 1000}, "circuit": {"failures": 2}}, m1={"quota": {"rpm": 5}}
    )
    spec = policy.providers["p1"]
    await acquirer.acquire(policy, tiers(policy), 0)
    await health.record(spec, outcome(AttemptOutcome.OK, tokens=100))
    await health.record(spec, outcome(AttemptOutcome.RATE_LIMITED, retry_after_s=3))
    await health.record(spec, outcome(AttemptOutcome.SERVER_ERROR, model="m2"))
    await health.block("p2", "maintenance")

    states = {s.provider: s for s in await health.status(policy)}

    p1 = states["p1"]
    assert (p1.blocked, p1.circuit_open_ms, p1.consecutive_failures) == (None, 0, 1)
    assert (p1.requests_this_minute, p1.tokens_this_minute) == (1, 100)
    assert (p1.request_headroom, p1.token_headroom) == (9, 900)
    m1, m2 = p1.models
    assert (m1.model, m1.requests_this_minute, m1.request_headroom, m1.token_headroom) == ("m1", 1, 4, None)
    assert 2000 < m1.cooldown_ms <= 3000
    assert (m2.model, m2.cooldown_ms, m2.requests_this_minute) == ("m2", 0, 0)
    assert states["p2"].blocked == "maintenance"
    assert states["p2"].request_headroom is None

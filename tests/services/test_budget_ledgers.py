"""The budget's Lua scripts against a real Redis, under a key prefix of their own."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from services.budget.ledgers import Balance, Ledger, LedgerStore
from shared import keys
from shared.contracts import BudgetScope
from tests.support.stack import wait_for

HOUR_MS = 3_600_000


@pytest.fixture
def store(redis) -> LedgerStore:
    return LedgerStore(redis)


def session(env: str, limit: int, window_ms: int = HOUR_MS) -> Ledger:
    return Ledger(BudgetScope.SESSION, keys.budget_session(env, "wf", "s-1"), limit, window_ms, False)


def spend(env: str, limit: int, window_ms: int = 86_400_000) -> Ledger:
    return Ledger(BudgetScope.SPEND, keys.budget_spend(env, "wf"), limit, window_ms, True)


async def test_reserve_holds_until_the_limit_then_refuses_with_the_balance(store, env_name):
    ledger = session(env_name, 100)
    assert await store.reserve("a", HOUR_MS, [(ledger, 60)]) is None
    refusal = await store.reserve("b", HOUR_MS, [(ledger, 41)])

    assert refusal.ledger == ledger and refusal.amount == 41
    assert refusal.balance == Balance(used=0, reserved=60)
    assert await store.reserve("c", HOUR_MS, [(ledger, 40)]) is None
    assert await store.balance(ledger) == Balance(used=0, reserved=100, in_flight=2)


async def test_reserve_is_all_or_nothing_across_ledgers(store, env_name):
    tokens, dollars = session(env_name, 1000), spend(env_name, 50)
    refusal = await store.reserve("a", HOUR_MS, [(tokens, 100), (dollars, 51)])

    assert refusal.ledger == dollars
    assert await store.balance(tokens) == Balance(0, 0, 0)
    assert await store.reserve("b", HOUR_MS, [(tokens, 100), (dollars, 50)]) is None
    assert await store.balance(tokens) == Balance(0, 100, 1)
    assert await store.balance(dollars) == Balance(0, 50, 1)


async def test_a_repeated_reserve_of_one_invocation_is_charged_once(store, env_name):
    ledger = session(env_name, 100)
    assert await store.reserve("a", HOUR_MS, [(ledger, 80)]) is None
    assert await store.reserve("a", HOUR_MS, [(ledger, 80)]) is None
    assert await store.balance(ledger) == Balance(0, 80, 1)


async def test_settle_replaces_the_reservation_and_a_duplicate_is_a_no_op(store, env_name):
    ledger = session(env_name, 100)
    await store.reserve("a", HOUR_MS, [(ledger, 80)])

    assert await store.settle("a", HOUR_MS, [(ledger, 30)]) == 1
    assert await store.balance(ledger) == Balance(used=30, reserved=0, in_flight=0)
    assert await store.settle("a", HOUR_MS, [(ledger, 30)]) == 0
    assert await store.balance(ledger) == Balance(used=30, reserved=0, in_flight=0)
    assert await store.reserve("b", HOUR_MS, [(ledger, 70)]) is None


async def test_an_expired_reservation_is_released(store, env_name):
    ledger = session(env_name, 100)
    await store.reserve("dead", 300, [(ledger, 100)])
    assert await store.reserve("b", HOUR_MS, [(ledger, 1)]) is not None

    await wait_for(lambda: _is(store.balance(ledger), Balance(0, 0, 0)), timeout=3, message="expiry")
    assert await store.reserve("b", HOUR_MS, [(ledger, 100)]) is None


async def test_a_settle_after_its_reservation_expired_changes_nothing(store, env_name):
    ledger = session(env_name, 100)
    await store.reserve("slow", 200, [(ledger, 90)])
    await wait_for(lambda: _is(store.balance(ledger), Balance(0, 0, 0)), timeout=3, message="expiry")

    assert await store.settle("slow", HOUR_MS, [(ledger, 70)]) == 0
    assert await store.balance(ledger) == Balance(0, 0, 0)


async def test_settled_tokens_leave_a_sliding_window(store, env_name):
    ledger = session(env_name, 100, window_ms=400)
    await store.reserve("a", HOUR_MS, [(ledger, 100)])
    await store.settle("a", HOUR_MS, [(ledger, 100)])
    assert await store.reserve("b", HOUR_MS, [(ledger, 1)]) is not None

    await wait_for(lambda: _is(store.balance(ledger), Balance(0, 0, 0)), timeout=3, message="window")
    assert await store.reserve("b", HOUR_MS, [(ledger, 100)]) is None


async def test_an_aligned_window_empties_at_the_period_boundary(store, redis, env_name):
    ledger = spend(env_name, 100, window_ms=1000)
    await store.reserve("a", HOUR_MS, [(ledger, 100)])
    await store.settle("a", HOUR_MS, [(ledger, 100)])
    settled_second, _ = await redis.time()

    await wait_for(lambda: _is(store.balance(ledger), Balance(0, 0, 0)), timeout=3, message="boundary")
    now_second, _ = await redis.time()
    assert now_second > settled_second  # emptied by the boundary, not before it


async def test_an_aligned_ledger_keeps_no_entry_per_settled_invocation(store, redis, env_name):
    ledger = spend(env_name, 1000)
    for i in range(3):
        await store.reserve(f"inv-{i}", HOUR_MS, [(ledger, 100)])
        await store.settle(f"inv-{i}", HOUR_MS, [(ledger, 40)])

    assert await store.balance(ledger) == Balance(used=120, reserved=0, in_flight=0)
    window, reserved, amounts, _, holders = ledger.keys
    assert await redis.exists(window, reserved, amounts, holders) == 0


async def test_every_key_written_has_a_ttl(store, redis, env_name):
    tokens, dollars = session(env_name, 1000), spend(env_name, 1000)
    await store.reserve("a", 5000, [(tokens, 10), (dollars, 10)])
    await store.reserve("b", 5000, [(tokens, 10), (dollars, 10)])
    await store.settle("a", 5000, [(tokens, 5), (dollars, 5)])

    written = [k async for k in redis.scan_iter(match=keys.prefix(env_name) + "*")]
    assert len(written) == 7  # an aligned ledger has no window set
    for key in written:
        assert 0 < await redis.pttl(key) <= 86_400_000, key


async def test_the_first_reservation_on_fresh_ledgers_leaves_no_key_without_a_ttl(store, redis, env_name):
    """A reservation never settled (its gateway died) on ledgers nothing touches again: every key it
    created must still expire, or Redis keeps it for good."""
    tokens, dollars = session(env_name, 1000), spend(env_name, 1000)
    assert await store.reserve("a", 5000, [(tokens, 10), (dollars, 10)], token="try-1") is None

    written = [k async for k in redis.scan_iter(match=keys.prefix(env_name) + "*")]
    assert written
    for key in written:
        assert 0 < await redis.pttl(key) <= 86_400_000, key


async def test_concurrent_reserves_from_two_clients_never_pass_the_limit(store, infra, env_name):
    other = aioredis.from_url(infra.redis_url)
    try:
        stores = [store, LedgerStore(other)]
        ledger = session(env_name, 10 * 108)
        refusals = await asyncio.gather(
            *(stores[i % 2].reserve(f"inv-{i}", HOUR_MS, [(ledger, 108)]) for i in range(50))
        )
    finally:
        await other.aclose()

    assert sum(r is None for r in refusals) == 10
    assert await store.balance(ledger) == Balance(used=0, reserved=1080, in_flight=10)


async def _is(balance, expected: Balance) -> bool:
    return await balance == expected


async def test_a_failed_tries_release_after_its_retry_reserved_leaves_the_retrys_hold(store, env_name):
    """Try A of an invocation fails and releases its hold; its retry B (same id) reserved first."""
    tokens, dollars = session(env_name, 1000), spend(env_name, 1000)
    both = [(tokens, 100), (dollars, 50)]
    assert await store.reserve("inv", HOUR_MS, both, token="try-a") is None
    assert await store.reserve("inv", HOUR_MS, both, token="try-b") is None  # takes A's hold over

    assert await store.settle("inv", HOUR_MS, [(tokens, 0), (dollars, 0)], token="try-a") == 0
    assert await store.balance(tokens) == Balance(used=0, reserved=100, in_flight=1)
    assert await store.settle("inv", HOUR_MS, [(tokens, 30), (dollars, 7)], token="try-b") == 2
    assert await store.balance(tokens) == Balance(used=30, reserved=0, in_flight=0)
    assert await store.balance(dollars) == Balance(used=7, reserved=0, in_flight=0)


async def test_a_retry_after_a_release_holds_and_is_charged_again(store, env_name):
    """Try A released its hold before its retry B reserved: B holds anew and its settle counts."""
    tokens, dollars = session(env_name, 1000), spend(env_name, 1000)
    both = [(tokens, 100), (dollars, 50)]
    assert await store.reserve("inv", HOUR_MS, both, token="try-a") is None
    assert await store.settle("inv", HOUR_MS, [(tokens, 0), (dollars, 0)], token="try-a") == 2

    assert await store.reserve("inv", HOUR_MS, both, token="try-b") is None
    assert await store.balance(tokens) == Balance(used=0, reserved=100, in_flight=1)
    assert await store.settle("inv", HOUR_MS, [(tokens, 30), (dollars, 7)], token="try-b") == 2
    assert await store.balance(tokens) == Balance(used=30, reserved=0, in_flight=0)
    assert await store.balance(dollars) == Balance(used=7, reserved=0, in_flight=0)


async def _server_ms(redis) -> int:
    seconds, micros = await redis.time()
    return seconds * 1000 + micros // 1000


async def test_extend_keeps_only_this_tries_hold_and_never_shortens_a_key(store, redis, env_name):
    """A stream's gateway extends its own try's hold; another try's token changes nothing, and a
    shorter extend leaves the hold and every key's TTL as they were (they only move later)."""
    tokens, dollars = session(env_name, 1000, window_ms=2000), spend(env_name, 1000)
    both = [(tokens, 100), (dollars, 50)]
    assert await store.reserve("other", 2000, both, token="try-o") is None  # the keys exist first
    assert await store.reserve("inv", 2000, both, token="try-a") is None
    before = await redis.zscore(tokens.keys[1], "inv")

    assert await store.extend("inv", HOUR_MS, [tokens, dollars], token="try-b") == 0
    assert await redis.zscore(tokens.keys[1], "inv") == before
    assert await store.extend("inv", HOUR_MS, [tokens, dollars], token="try-a") == 2
    extended = await redis.zscore(tokens.keys[1], "inv")
    assert extended >= await _server_ms(redis) + HOUR_MS - 1000 > before
    for key in tokens.keys[1:]:  # the window set holds nothing settled yet: it does not exist
        assert await redis.pttl(key) > HOUR_MS - 1000, key

    assert await store.extend("inv", 100, [tokens, dollars], token="try-a") == 2  # still held: kept
    assert await redis.zscore(tokens.keys[1], "inv") == extended
    assert await redis.pttl(tokens.keys[1]) > HOUR_MS - 1000
    assert await redis.pttl(dollars.keys[1]) > 86_400_000 - 60_000  # the spend day's, untouched
    assert await store.settle("inv", HOUR_MS, [(tokens, 30), (dollars, 7)], token="try-a") == 2
    assert (await store.balance(tokens)).used == 30


async def test_extend_never_brings_back_a_settled_or_expired_hold(store, redis, env_name):
    ledger = session(env_name, 100)
    await store.reserve("settled", HOUR_MS, [(ledger, 10)], token="t")
    await store.settle("settled", HOUR_MS, [(ledger, 4)], token="t")
    assert await store.extend("settled", HOUR_MS, [ledger], token="t") == 0

    await store.reserve("lapsed", 50, [(ledger, 90)], token="t")
    expires = await redis.zscore(ledger.keys[1], "lapsed")
    await wait_for(lambda: _past(redis, expires), timeout=3, message="the hold's expiry")
    assert await store.extend("lapsed", HOUR_MS, [ledger], token="t") == 0
    assert await store.balance(ledger) == Balance(used=4, reserved=0, in_flight=0)
    assert await store.reserve("next", HOUR_MS, [(ledger, 96)]) is None


async def _past(redis, ms: float) -> bool:
    return await _server_ms(redis) > ms

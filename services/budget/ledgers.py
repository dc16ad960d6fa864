"""Limits held in Redis: check-and-reserve, extend, settle and read, one Lua script each.

The layout of a ledger is documented in `lua/ledger.lua`, which is prepended to every script.
Scripts are registered once and loaded lazily (again after a Redis restart: redis-py reloads
on NOSCRIPT). Redis going away becomes `BudgetUnavailable`, the one error the gateway maps to
the workflow's `on_unavailable` mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from redis import exceptions as rx

from shared.contracts import BudgetScope
from shared.telemetry import metrics
from switchboard_sdk import errors

LUA = Path(__file__).with_name("lua")
# Redis cannot be reached or cannot take writes; every other driver error is a bug.
UNREACHABLE = (rx.ConnectionError, rx.TimeoutError, rx.ReadOnlyError, rx.OutOfMemoryError)


@dataclass(frozen=True)
class Ledger:
    """One limit over a window: tokens per session window, or micro-USD per UTC day."""

    scope: BudgetScope
    keys: tuple[str, ...]
    limit: int
    window_ms: int
    aligned: bool  # the window is the current calendar period (the UTC day), not the last window_ms


@dataclass(frozen=True)
class Balance:
    used: int  # settled in the window
    reserved: int  # held by reservations that have not expired
    in_flight: int = 0  # how many reservations those are


@dataclass(frozen=True)
class Refusal:
    """The first ledger that could not hold its amount, with its balance before the call."""

    ledger: Ledger
    amount: int
    balance: Balance


def _script(name: str) -> str:
    return (LUA / "ledger.lua").read_text() + "\n" + (LUA / f"{name}.lua").read_text()


class LedgerStore:
    """The budget scripts on one Redis client."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._reserve = redis.register_script(_script("reserve_v2"))
        self._extend = redis.register_script(_script("extend_v1"))
        self._settle = redis.register_script(_script("settle_v2"))
        self._usage = redis.register_script(_script("usage_v1"))

    async def reserve(
        self, invocation_id: str, ttl_ms: int, debits: Sequence[tuple[Ledger, int]], token: str = ""
    ) -> Refusal | None:
        """Hold every amount or none, for the try `token`; None when all are held (or were already
        for this id: an earlier try's hold is then taken over by this one, not charged again)."""
        args: list = [invocation_id, ttl_ms, token]
        for ledger, amount in debits:
            args += [amount, ledger.limit, ledger.window_ms, int(ledger.aligned)]
        out = await self._run("reserve", self._reserve, _keys(debits), args)
        if out[0] == 0:
            return None
        i = out[0] - 1
        ledger, amount = debits[i]
        return Refusal(ledger, amount, Balance(used=out[1 + 2 * i], reserved=out[2 + 2 * i]))

    async def extend(self, invocation_id: str, ttl_ms: int, ledgers: Sequence[Ledger], token: str) -> int:
        """Hold the try `token`'s reservation for another `ttl_ms` from now; the number of ledgers
        where it was still held (0: expired, settled or taken over, and nothing changed)."""
        keys = [key for ledger in ledgers for key in ledger.keys]
        return await self._run("extend", self._extend, keys, [invocation_id, ttl_ms, token])

    async def settle(
        self, invocation_id: str, ttl_ms: int, credits: Sequence[tuple[Ledger, int]], token: str = ""
    ) -> int:
        """Replace the reservations the try `token` holds by the actual amount; 0 when none was
        held (a duplicate, a settle that came after `ttl_ms`, or one whose hold a retry took over)."""
        args: list = [invocation_id, ttl_ms, token]
        for ledger, actual in credits:
            args += [actual, ledger.window_ms, int(ledger.aligned)]
        return await self._run("settle", self._settle, _keys(credits), args)

    async def balance(self, ledger: Ledger) -> Balance:
        """Where a ledger stands now, read without changing it."""
        used, reserved, in_flight = await self._run(
            "show", self._usage, ledger.keys, [ledger.window_ms, int(ledger.aligned)]
        )
        return Balance(used, reserved, in_flight)

    async def _run(self, operation: str, script, keys: Sequence[str], args: list):
        try:
            return await script(keys=keys, args=args)
        except UNREACHABLE as exc:
            metrics.BUDGET_STORE_ERRORS.labels(operation).inc()
            raise errors.BudgetUnavailable(f"budget store unreachable ({type(exc).__name__}: {exc})") from exc


def _keys(pairs: Sequence[tuple[Ledger, int]]) -> list[str]:
    return [key for ledger, _ in pairs for key in ledger.keys]

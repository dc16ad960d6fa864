"""Provider call outcomes for the router: failures at once (a 429 must start its cooldown for
every replica before the next call), successes summed per provider/model every 50 ms (they
only reset failure counts and add tokens to the minute's quota use)."""

from __future__ import annotations

from collections import defaultdict

from services.gateway.batching import Batcher
from shared import names
from shared.bus import Bus
from shared.contracts import AttemptOutcome, TierOutcome


class OutcomeReporter:
    def __init__(self, bus: Bus, env: str) -> None:
        self.bus = bus
        self.subject = names.router_outcome(env)
        self.successes: Batcher[TierOutcome] = Batcher(
            "router-outcomes", self._flush, interval_s=0.05, max_items=1024
        )

    def report(self, outcome: TierOutcome) -> None:
        if outcome.outcome is AttemptOutcome.OK:
            self.successes.add(outcome)
        else:
            self.bus.spawn(self.bus.publish(self.subject, outcome))

    async def _flush(self, outcomes: list[TierOutcome]) -> None:
        totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for o in outcomes:
            total = totals[(o.provider, o.model)]
            total[0] += o.calls
            total[1] += o.tokens
        for (provider, model), (calls, used) in totals.items():
            await self.bus.publish(
                self.subject,
                TierOutcome(
                    provider=provider, model=model, calls=calls, tokens=used, outcome=AttemptOutcome.OK
                ),
            )

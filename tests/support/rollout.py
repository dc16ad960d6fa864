"""Writing rollout reports as replicas would have left them (a dead one, a wedged one)."""

from __future__ import annotations

import nats

from shared import rollout
from shared.contracts import ReplicaReport


async def put_report(stack, **fields) -> None:
    """A report in the rollout bucket of the stack's env."""
    nc = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    try:
        kv = await rollout.bucket(nc.jetstream(), stack.env)
        report = ReplicaReport(heartbeat_s=5.0, **fields)
        await kv.put(f"{report.service}.{report.replica}", report.model_dump_json().encode())
    finally:
        await nc.close()

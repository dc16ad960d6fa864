"""Writing rollout reports as replicas would have left them (a dead one, a wedged one)."""

from __future__ import annotations

import nats

from shared import rollout
from shared.contracts import ReplicaReport
from tests.support.helpers import SIM_KEYS, infra_env


async def put_report(stack, **fields) -> None:
    """A report in the rollout bucket of the stack's env."""
    nc = await nats.connect(stack.infra.nats_url, **stack.infra.nats_options)
    try:
        kv = await rollout.bucket(nc.jetstream(), stack.env)
        report = ReplicaReport(heartbeat_s=5.0, **fields)
        await kv.put(f"{report.service}.{report.replica}", report.model_dump_json().encode())
    finally:
        await nc.close()


def replica_env_without(stack, var: str) -> dict[str, str]:
    """The environment of a service process in the stack's env that lacks `var` (which the
    in-process replicas and the operator have): it rejects a version that needs `var`."""
    env = infra_env(
        stack.infra,
        SB_ENV=stack.env,
        SB_CONFIG_DIR=str(stack.policy_dir),
        SB_SIMULATOR_URL=stack.sim.url,
        **SIM_KEYS,
    )
    env.pop(var, None)
    return env


def use_variable_without_default(stack, var: str) -> None:
    """Point openai-sim at ${var}/p/openai-sim/v1: a replica without `var` cannot load it."""
    path = stack.policy_dir / "providers.yaml"
    text = path.read_text()
    old = "${SB_SIMULATOR_URL:-http://127.0.0.1:9180}/p/openai-sim/v1"
    assert old in text
    path.write_text(text.replace(old, "${" + var + "}/p/openai-sim/v1"))

"""The fault suite: every part of Switchboard fails in turn under steady, bounded load, and the
suite counts what was lost or charged twice.

The world is the suite's own: a NATS server (JetStream in a temp dir), a Redis (append-only)
and a PostgreSQL (initdb into a temp dir) on ports of their own, so they can be killed and
restarted; the provider simulator at 50 ms; two gateway replicas and one router, budget and
recorder, each a real process. Agents are SDK clients in this process: closed-loop workers
that send invocations of a fail_closed workflow and, like a careful agent, retry an unanswered
one (and one answered `duplicate_in_flight`) with the same invocation id until it is answered
or `GIVE_UP_S` passes.

Each phase starts the load, injects one fault, holds it, recovers, keeps the load on for a
while, then stops the load and waits for every invocation of the phase to end, so that its
counts are its own. At the end, once the audit log has caught up, it compares:

- invocations sent / answered / unanswered;
- provider calls (the simulator's count) with the attempts in the audit log (each recorded as
  started before the call is made; one whose gateway died during the call never finishes);
- the session ledger of the phase (its own session id) and the workflow's spend today with the
  usage of the answered invocations (a difference is a double charge or an unmetered call);
- audit rows with answered invocations.

Run `python -m tests.faults.suite` (the full run, `make faults`; writes docs/reliability.md), or
`--short` for the CI form (every fault, shorter holds and fewer agents; run by `make test`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import yaml

from services.budget import pricing
from shared import codec, migrate, names
from shared.contracts import BudgetShowReply, BudgetShowRequest, InvokeRequest, Message
from shared.policy import load_dir_or_raise
from shared.simctl import SimulatorControl
from switchboard_sdk import Client, errors
from tests.support.helpers import free_port
from tests.support.servers import NatsServer, PostgresServer, RedisServer
from tests.support.stack import REPO, wait_for

ENV = "faults"
WORKFLOW = "support-triage"  # fail_closed: agents never pass through, every call is the plane's
PRIMARY = ("openai-sim", "gpt-sim-large")
SIM_LATENCY_MS = 50
KEYS = {"SB_OPENAI_SIM_API_KEY": "sk-faults-openai", "SB_ANTHROPIC_SIM_API_KEY": "sk-faults-anthropic"}
TRY_TIMEOUT_S = 15.0  # one try: longer than the chain's worst case (5 s + 8 s)
GIVE_UP_S = 120.0  # an agent retries an unanswered invocation (same id) this long
SERVICES = ("recorder", "router", "budget", "gateway-1", "gateway-2")


def say(msg: str) -> None:
    print(f"[faults] {msg}", file=sys.stderr, flush=True)


# --- the world -----------------------------------------------------------------------------


class Proc:
    """One service (or the simulator) as `python -m services.<module>`, output in a file."""

    def __init__(self, label: str, module: str, env: dict[str, str], log_dir: Path, port: int) -> None:
        self.label, self.module, self.port = label, module, port
        self.env = env
        self.log_path = log_dir / f"{label}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Proc:
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"services.{self.module}",
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        return self

    async def ready(self, path: str = "/readyz", timeout: float = 60.0) -> None:
        async def up() -> bool:
            if self.proc.returncode is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise AssertionError(f"{self.label} exited {self.proc.returncode}: {tail}")
            try:
                async with httpx.AsyncClient(timeout=1.0) as http:
                    response = await http.get(f"http://127.0.0.1:{self.port}{path}")
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        await wait_for(up, timeout=timeout, interval=0.1, message=f"{self.label} {path}")

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class World:
    """Servers, simulator and services of one suite run, all in `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nats = NatsServer(root)
        self.redis = RedisServer(root)
        self.postgres = PostgresServer(root)
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.sim: Proc | None = None
        self.simctl: SimulatorControl | None = None
        self.services: dict[str, Proc] = {}
        self.policy_dir = root / "config"

    async def start(self) -> World:
        await asyncio.gather(self.nats.start(), self.redis.start(), self.postgres.start())
        await migrate.apply(self.postgres.url, verbose=False)
        sim_port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SB_"))}
        base |= KEYS | {"PYTHONUNBUFFERED": "1"}
        self.sim = Proc(
            "simulator",
            "simulator",
            base | {"SB_SIM_PORT": str(sim_port), "SB_SIM_LATENCY_MS": str(SIM_LATENCY_MS)},
            self.logs,
            sim_port,
        )
        await self.sim.start()
        await self.sim.ready("/healthz")
        self.simctl = SimulatorControl(f"http://127.0.0.1:{sim_port}")
        self._write_policy(f"http://127.0.0.1:{sim_port}")
        env = base | {
            "SB_ENV": ENV,
            "SB_NATS_URL": self.nats.url,
            "SB_REDIS_URL": self.redis.url,
            "SB_DATABASE_URL": self.postgres.url,
            "SB_CONFIG_DIR": str(self.policy_dir),
            "SB_LOG_LEVEL": "WARNING",
        }
        for label in SERVICES:
            port = free_port()
            module = label.split("-")[0]
            self.services[label] = Proc(label, module, env | {"SB_HTTP_PORT": str(port)}, self.logs, port)
        for proc in self.services.values():  # the recorder first: it creates nothing others need
            await proc.start()
        await asyncio.gather(*(p.ready() for p in self.services.values()))
        return self

    def _write_policy(self, sim_url: str) -> None:
        """config/ with budgets that never refuse: the suite checks accounting, not refusals."""
        self.policy_dir.mkdir(exist_ok=True)
        for path in sorted((REPO / "config").glob("*.y*ml")):
            doc = yaml.safe_load(
                path.read_text().replace("${SB_SIMULATOR_URL:-http://127.0.0.1:9180}", sim_url)
            )
            for workflow in (doc.get("workflows") or {}).values():
                workflow["budget"]["session"] = {"tokens": 1_000_000_000, "window_s": 86400}
                workflow["budget"]["usd_per_day"] = 1_000_000.0
            (self.policy_dir / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))

    async def restart_service(self, label: str, down_s: float) -> None:
        proc = self.services[label]
        await proc.kill(signal.SIGKILL)
        await asyncio.sleep(down_s)
        await proc.start()
        await proc.ready()

    async def stop(self) -> None:
        for proc in reversed(list(self.services.values())):
            await proc.kill(signal.SIGTERM)
        if self.simctl is not None:
            await self.simctl.aclose()
        if self.sim is not None:
            await self.sim.kill(signal.SIGTERM)
        for server in (self.nats, self.redis):
            with contextlib.suppress(Exception):
                await server.stop()
        await self.postgres.destroy()


# --- faults --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    inject: Callable[[World, float], Awaitable[None]]  # (world, hold_s): inject, hold, recover


def _kill(label: str) -> Callable[[World, float], Awaitable[None]]:
    async def run(world: World, hold_s: float) -> None:
        await world.restart_service(label, hold_s)

    return run


def _restart(server: str, sig: int = signal.SIGTERM) -> Callable[[World, float], Awaitable[None]]:
    async def run(world: World, hold_s: float) -> None:
        target = getattr(world, server)
        await target.stop(sig)
        await asyncio.sleep(hold_s)
        await target.start()

    return run


async def _storm_429(world: World, hold_s: float) -> None:
    fault = await world.simctl.add_fault("429", provider=PRIMARY[0], model=PRIMARY[1], retry_after_s=1.0)
    await asyncio.sleep(hold_s)
    await world.simctl.remove_fault(fault)


async def _hang_primary(world: World, hold_s: float) -> None:
    fault = await world.simctl.add_fault("hang", provider=PRIMARY[0], model=PRIMARY[1])
    await asyncio.sleep(hold_s)
    await world.simctl.remove_fault(fault)


async def _nothing(world: World, hold_s: float) -> None:
    await asyncio.sleep(hold_s)


FAULTS = [
    Fault("baseline", "no fault", _nothing),
    # An invocation in flight at a killed gateway: its claim lapses within claim_ttl_s, then its
    # retry calls the provider again; the dead call is recorded as started, never finished.
    Fault("kill gateway-1", "SIGKILL one of two gateways, restart it", _kill("gateway-1")),
    Fault("kill router", "SIGKILL the router, restart it", _kill("router")),
    Fault("kill budget", "SIGKILL the budget service, restart it", _kill("budget")),
    Fault("kill recorder", "SIGKILL the recorder, restart it", _kill("recorder")),
    Fault("restart redis", "stop Redis (SIGTERM), start it again", _restart("redis")),
    Fault("restart postgres", "stop PostgreSQL (fast), start it again", _restart("postgres", signal.SIGINT)),
    Fault("restart nats", "stop NATS (SIGTERM), start it again on its store", _restart("nats")),
    Fault("429 storm", "every call to the primary answers 429", _storm_429),
    Fault("hang at primary", "the primary accepts calls and never answers", _hang_primary),
]


# --- load ----------------------------------------------------------------------------------


@dataclass
class Call:
    invocation_id: str
    phase: str
    started: float
    ended: float | None = None
    status: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tries: int = 0
    error: str | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Load:
    """Closed-loop agents: `workers` invocations in flight at most, `pause_s` between them."""

    def __init__(self, client: Client, workers: int, pause_s: float) -> None:
        self.client = client
        self.workers = workers
        self.pause_s = pause_s
        self.calls: list[Call] = []

    async def run(self, phase: str, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._worker(phase, stop) for _ in range(self.workers)))

    async def _worker(self, phase: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            call = Call(uuid.uuid4().hex, phase, time.monotonic())
            self.calls.append(call)
            await self._complete(call)
            await asyncio.sleep(self.pause_s)

    async def _complete(self, call: Call) -> None:
        request = InvokeRequest(
            invocation_id=call.invocation_id,
            workflow=WORKFLOW,
            session_id=_session(call.phase),
            agent="fault-agent",
            messages=[Message(role="user", content=f"Classify ticket {call.invocation_id}")],
            max_tokens=64,
        )
        while True:
            call.tries += 1
            try:
                result = await self.client.send(request, timeout=TRY_TIMEOUT_S)
            except errors.ControlPlaneUnavailable as exc:
                call.error = exc.code
            else:
                code = result.error.code if result.error else None
                if code != errors.DuplicateInFlight.code:
                    call.ended = time.monotonic()
                    call.status, call.model, call.error = result.status.value, result.model, code
                    call.prompt_tokens = result.usage.prompt_tokens
                    call.completion_tokens = result.usage.completion_tokens
                    return
                call.error = code
            if time.monotonic() - call.started > GIVE_UP_S:
                return
            await asyncio.sleep(0.25)


def _session(phase: str) -> str:
    return "phase-" + "".join(c if c.isalnum() else "-" for c in phase)


# --- one run -------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    fault: Fault
    calls: list[Call]
    provider_calls: int
    seconds: float
    at_fault: int = 0  # invocations in flight when the fault was injected
    started: int = 0  # provider calls recorded as started (before the call)
    attempts: int = 0  # of those, the ones recorded as finished
    served_twice: int = 0
    audit_rows: int = 0
    ledger_tokens: int = 0
    ledger_in_flight: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def answered(self) -> list[Call]:
        return [c for c in self.calls if c.ended is not None]

    @property
    def settled_tokens(self) -> int:
        return sum(c.tokens for c in self.answered)

    @property
    def window_s(self) -> float:
        """From the start of the first invocation that did not get a clean first answer to the
        end of the last one: how long agents saw the fault."""
        hit = [c for c in self.calls if c.tries > 1 or c.status not in ("success", "fallback")]
        if not hit:
            return 0.0
        return max((c.ended or time.monotonic()) for c in hit) - min(c.started for c in hit)


async def run_phase(world: World, load: Load, fault: Fault, lead_s: float, hold_s: float, tail_s: float):
    say(f"phase {fault.name}: {fault.what}")
    before = (await world.simctl.stats())["total"]
    started = time.monotonic()
    stop = asyncio.Event()
    first = len(load.calls)
    running = asyncio.create_task(load.run(fault.name, stop))
    await asyncio.sleep(lead_s)
    at_fault = sum(1 for c in load.calls[first:] if c.ended is None)
    await fault.inject(world, hold_s)
    await asyncio.sleep(tail_s)
    stop.set()
    await running
    after = (await world.simctl.stats())["total"]
    return PhaseResult(fault, load.calls[first:], after - before, time.monotonic() - started, at_fault)


async def audit(world: World, results: list[PhaseResult]) -> None:
    """Wait for the recorder to catch up, then count rows, attempts and ledgers per phase."""
    answered = [c.invocation_id for r in results for c in r.answered]
    conn = await asyncpg.connect(world.postgres.url)
    try:

        async def rows() -> int:
            return await conn.fetchval(
                "select count(distinct invocation_id) from invocations"
                " where env = $1 and invocation_id = any($2::text[])",
                ENV,
                answered,
            )

        seen, still = -1, 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and still < 10:  # caught up, or 5 s without progress
            n = await rows()
            still = still + 1 if n == seen else 0
            seen = n
            if n == len(answered):
                break
            await asyncio.sleep(0.5)
        for result in results:
            ids = [c.invocation_id for c in result.calls]
            result.audit_rows = await conn.fetchval(
                "select count(distinct invocation_id) from invocations"
                " where env = $1 and invocation_id = any($2::text[])",
                ENV,
                ids,
            )
            result.started = await conn.fetchval(
                "select count(*) from events where env = $1 and kind = 'attempt_started'"
                " and invocation_id = any($2::text[])",
                ENV,
                ids,
            )
            result.attempts = await conn.fetchval(
                "select count(*) from events where env = $1 and kind = 'attempt'"
                " and invocation_id = any($2::text[]) and body->>'outcome' <> 'skipped'",
                ENV,
                ids,
            )
            result.served_twice = await conn.fetchval(
                "select count(*) from (select invocation_id from events where env = $1 and kind = 'attempt'"
                " and invocation_id = any($2::text[]) and body->>'outcome' = 'ok'"
                " group by invocation_id having count(*) > 1) twice",
                ENV,
                ids,
            )
    finally:
        await conn.close()
    async with Client(world.nats.url, env=ENV, state_dir=world.root / "sdk") as sb:
        for result in results:
            reply = await _budget_show(sb, _session(result.fault.name))
            result.ledger_tokens = int(reply.session.used) if reply.session else 0
            result.ledger_in_flight = reply.session.in_flight if reply.session else 0


async def _budget_show(sb: Client, session: str) -> BudgetShowReply:
    await sb.connect()
    msg = await sb._nc.request(
        names.budget_show(ENV),
        codec.encode(BudgetShowRequest(workflow=WORKFLOW, session_id=session)),
        timeout=5,
    )
    return codec.decode(msg.data, BudgetShowReply)


async def spend_check(world: World, results: list[PhaseResult]) -> tuple[float, float]:
    """(the workflow's spend today in the ledger, the priced usage of every answered call)."""
    policy = load_dir_or_raise(world.policy_dir)
    workflow = policy.workflows[WORKFLOW]
    expected = sum(
        pricing.actual(policy, workflow, c.model, c.prompt_tokens, c.completion_tokens)
        for r in results
        for c in r.answered
        if c.tokens
    )
    async with Client(world.nats.url, env=ENV, state_dir=world.root / "sdk") as sb:
        reply = await _budget_show(sb, "phase-baseline")
    ledger = reply.spend_today.used if reply.spend_today else 0.0
    return ledger, pricing.usd(expected)


def judge(result: PhaseResult) -> None:
    unanswered = len(result.calls) - len(result.answered)
    if unanswered:
        result.problems.append(f"{unanswered} unanswered")
    if result.audit_rows != len(result.answered):
        result.problems.append(f"{len(result.answered) - result.audit_rows} answered without an audit row")
    if result.provider_calls > result.started:
        result.problems.append(
            f"{result.provider_calls - result.started} provider calls without a recorded attempt"
        )
    if result.attempts > result.provider_calls:
        result.problems.append(f"{result.attempts - result.provider_calls} recorded calls never made")
    if result.served_twice:
        result.problems.append(f"{result.served_twice} invocations answered by a provider twice")
    if result.ledger_tokens != result.settled_tokens:
        diff = result.ledger_tokens - result.settled_tokens
        result.problems.append(f"session ledger {'over' if diff > 0 else 'under'} by {abs(diff)} tokens")


# --- report --------------------------------------------------------------------------------


def table(results: list[PhaseResult]) -> str:
    head = (
        "| fault | sent | in flight at the fault | answered | unanswered | statuses | retried "
        "| provider calls | recorded attempts | never finished "
        "| ledger tokens | settled tokens | held reservations | audit rows | window (s) | result |\n"
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for r in results:
        statuses = Counter(c.status for c in r.answered)
        shown = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
        retried = sum(1 for c in r.calls if c.tries > 1)
        verdict = "ok" if not r.problems else "**" + "; ".join(r.problems) + "**"
        lines.append(
            f"| {r.fault.name} | {len(r.calls)} | {r.at_fault} | {len(r.answered)} "
            f"| {len(r.calls) - len(r.answered)} "
            f"| {shown} | {retried} | {r.provider_calls} | {r.started} | {r.started - r.attempts} "
            f"| {r.ledger_tokens} "
            f"| {r.settled_tokens} | {r.ledger_in_flight} | {r.audit_rows} | {r.window_s:.1f} | {verdict} |"
        )
    return head + "\n".join(lines) + "\n"


@dataclass
class Outcome:
    results: list[PhaseResult]
    spend_ledger: float
    spend_expected: float
    seconds: float

    @property
    def ok(self) -> bool:
        return not any(r.problems for r in self.results) and self.spend_ok

    @property
    def spend_ok(self) -> bool:
        return abs(self.spend_ledger - self.spend_expected) < 1e-6 * max(1, len(self.results))


async def run(
    faults: list[Fault], *, hold_s: float, lead_s: float, tail_s: float, workers: int, pause_s: float
):
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="sb-faults-"))
    world = World(root)
    try:
        await world.start()
        say(f"world up in {time.monotonic() - started:.1f}s ({root})")
        async with Client(world.nats.url, env=ENV, agent="fault-agent", state_dir=root / "sdk") as sb:
            load = Load(sb, workers, pause_s)
            results = [await run_phase(world, load, f, lead_s, hold_s, tail_s) for f in faults]
        await audit(world, results)
        spend_ledger, spend_expected = await spend_check(world, results)
        for result in results:
            judge(result)
        return Outcome(results, spend_ledger, spend_expected, time.monotonic() - started)
    finally:
        await world.stop()
        if os.environ.get("SB_FAULTS_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the CI form: short holds, fewer agents")
    parser.add_argument("--report", type=Path, help="write the table into this Markdown file")
    args = parser.parse_args()
    knobs = SHORT if args.short else FULL
    outcome = asyncio.run(run(FAULTS, **knobs))
    text = table(outcome.results)
    spend = f"spend today: ledger ${outcome.spend_ledger:.6f}, priced usage ${outcome.spend_expected:.6f}"
    print(text + "\n" + spend + f"\n\n{len(FAULTS)} faults in {outcome.seconds:.0f}s")
    if args.report:
        write_report(args.report, outcome, knobs)
    sys.exit(0 if outcome.ok else 1)


FULL = {"hold_s": 8.0, "lead_s": 3.0, "tail_s": 6.0, "workers": 8, "pause_s": 0.02}
SHORT = {"hold_s": 3.0, "lead_s": 1.5, "tail_s": 3.0, "workers": 6, "pause_s": 0.02}


def write_report(path: Path, outcome: Outcome, knobs: dict) -> None:
    """Replace the generated section of docs/reliability.md, keeping the prose around it."""
    begin, end = "<!-- fault-table:begin -->", "<!-- fault-table:end -->"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    body = (
        f"{begin}\n_Generated by `make faults` on {stamp}: {knobs['workers']} agents, "
        f"fault held {knobs['hold_s']:g} s, {outcome.seconds:.0f} s in all._\n\n"
        + table(outcome.results)
        + f"\nSpend today (all phases): ledger ${outcome.spend_ledger:.6f}, "
        f"priced usage of answered calls ${outcome.spend_expected:.6f}"
        + (" — equal.\n" if outcome.spend_ok else " — **differ**.\n")
        + end
    )
    text = path.read_text() if path.exists() else f"# Reliability\n\n{begin}\n{end}\n"
    before, _, rest = text.partition(begin)
    _, _, after = rest.partition(end)
    path.write_text(before + body + after)


if __name__ == "__main__":
    main()

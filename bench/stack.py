"""The system under test as processes: the provider simulator and every service started like
deploy/local/run.py does (own SB_ENV, free ports, a bench copy of the policy), their CPU time and
peak RSS read from /proc, and everything the environment left behind removed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import nats
import redis.asyncio as aioredis
import yaml

from services import catalog
from shared import codec, keys, names
from shared.contracts import IngressKeyAdd, IngressKeysReply

REPO = Path(__file__).resolve().parents[1]
SERVICES = catalog.NAMES  # started in this order, stopped in reverse
INFRA = {"nats": ("nats-server",), "redis": ("redis-server",), "postgres": ("postgres", "postmaster")}
KEYS = {"SB_OPENAI_SIM_API_KEY": "sk-bench-openai", "SB_ANTHROPIC_SIM_API_KEY": "sk-bench-anthropic"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
HUGE = 1_000_000_000


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- /proc ---------------------------------------------------------------------------------


def cpu_seconds(pid: int, children: bool = False) -> float | None:
    """utime + stime of a process (and of its reaped children), from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


async def wait_machine_idle(max_wait_s: float, busy_pct: float = 25.0) -> float:
    """Wait (at most `max_wait_s`) until the machine has been nearly idle for two seconds: other
    work (a test suite, a build) on a 2-core machine would skew every number. Returns the last
    busy % seen (100 = one core)."""
    deadline = time.monotonic() + max_wait_s
    quiet = 0
    while True:
        b0, t0 = machine_busy_s(), time.monotonic()
        await asyncio.sleep(1.0)
        pct = 100 * (machine_busy_s() - b0) / (time.monotonic() - t0)
        quiet = quiet + 1 if pct <= busy_pct else 0
        if quiet >= 2 or time.monotonic() >= deadline:
            return round(pct, 1)


def pids_named(comms: tuple[str, ...]) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in comms:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def tree_pids(root: int) -> list[int]:
    """A process and all its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += parents.get(pid, [])
    return out


def source_digest() -> str:
    """A digest of the code that a service started now would run (services/ and shared/):
    others may edit it while a long run goes on, and a result should say what it measured."""
    digest = hashlib.sha256()
    for path in sorted([*REPO.glob("services/**/*"), *REPO.glob("shared/**/*")]):
        if path.suffix in (".py", ".lua", ".sql") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def free_port() -> int:
    """A loopback port below Linux's ephemeral range (32768-60999), which no outgoing connection
    takes between this check and the service binding it (port 0 would give an ephemeral one)."""
    for port in random.sample(range(20000, 32768), 64):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32767")


def answers(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


# --- policy --------------------------------------------------------------------------------


def bench_policy(target: Path) -> Path:
    """A copy of config/ for the benchmark: no 429 cooldowns (every call walks the chain),
    quotas and budgets that never bind. base_url keeps its ${SB_SIMULATOR_URL:-...}."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted((REPO / "config").glob("*.y*ml")):
        doc = yaml.safe_load(path.read_text()) or {}
        for provider in (doc.get("providers") or {}).values():
            provider["cooldown"] = {"enabled": False}
            provider["quota"] = {"rpm": HUGE, "tpm": HUGE * 100}
            for model in provider.get("models", {}).values():
                model["quota"] = {"rpm": HUGE, "tpm": HUGE * 100}
        for workflow in (doc.get("workflows") or {}).values():
            budget = workflow.get("budget") or {}
            if "session" in budget:
                budget["session"]["tokens"] = HUGE * 100
            if "usd_per_day" in budget:
                budget["usd_per_day"] = float(HUGE)
        (target / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return target


# --- processes -----------------------------------------------------------------------------


class Stack:
    """Simulator + services of one benchmark environment, as child processes."""

    def __init__(self, env_name: str, work_dir: Path) -> None:
        self.env_name = env_name
        self.work_dir = work_dir
        self.log_dir = work_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.policy_dir = bench_policy(work_dir / "config")
        self.ports = {name: free_port() for name in ("simulator", *SERVICES)}
        # Further listening ports (settings field -> port), e.g. the ingress's API.
        self.other_ports = {
            name: {f: free_port() for f in catalog.entry(name).other_ports} for name in SERVICES
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.peak_rss: dict[str, float] = {}
        self.version: str | None = None
        self.healthz_broken: set[str] = set()
        self.sources: list[str] = []  # source_digest() at every start of a process
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        self.base_env.setdefault("SB_NATS_URL", "nats://127.0.0.1:4222")
        self.base_env.setdefault("SB_REDIS_URL", "redis://127.0.0.1:6379/0")
        self.base_env.setdefault("SB_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/switchboard")
        self.base_env |= {
            **KEYS,
            "SB_ENV": env_name,
            "SB_CONFIG_DIR": str(self.policy_dir),
            "SB_SIMULATOR_URL": self.sim_url,
            "SB_HTTP_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
        self.http: aiohttp.ClientSession | None = None
        self.nc = None

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['simulator']}"

    @property
    def nats_url(self) -> str:
        return self.base_env["SB_NATS_URL"]

    async def __aenter__(self) -> Stack:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self.nc = await nats.connect(self.nats_url, name="switchboard-bench")
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop(*reversed(list(self.procs)))
        with contextlib.suppress(Exception):
            await self.cleanup()
        await self.nc.close()
        await self.http.close()

    def _spawn(self, name: str, env: dict[str, str]) -> None:
        digest = source_digest()
        if digest not in self.sources:
            self.sources.append(digest)
        out = open(self.log_dir / f"{name}.log", "ab")  # the child owns it
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()

    async def start_simulator(self, latency_ms: float) -> None:
        env = {
            **self.base_env,
            "SB_SIM_PORT": str(self.ports["simulator"]),
            "SB_SIM_LATENCY_MS": str(latency_ms),
        }
        self._spawn("simulator", env)
        await self._wait_http("simulator", "/healthz")

    async def start_services(self, log_level: str) -> None:
        """Apply the bench policy (first time only), start every service, wait until each is
        ready and runs that version."""
        if self.version is None:
            self.version = await self.apply_policy()
        for name in SERVICES:
            env = {**self.base_env, "SB_HTTP_PORT": str(self.ports[name]), "SB_LOG_LEVEL": log_level}
            env |= {f"SB_{field.upper()}": str(port) for field, port in self.other_ports[name].items()}
            self._spawn(name, env)
        for name in SERVICES:
            await self._wait_http(name, "/readyz")
        await self._wait_version()

    def stop(self, *names: str) -> None:
        """SIGTERM, then wait (services drain in-flight work); kill only what will not stop."""
        self.sample_rss()
        for name in names:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name in names:
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if code not in (0, -signal.SIGTERM):
                log(f"{name} exited with {code}; see {self.log_dir / (name + '.log')}")

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log_dir}/{name}.log")

    async def _wait_http(self, name: str, path: str, timeout: float = 30.0) -> dict:
        url = f"http://127.0.0.1:{self.ports[name]}{path}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.http.get(url) as r:
                    if r.status == 200:
                        return await r.json()
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{name} not ready after {timeout:g}s; see {self.log_dir}/{name}.log")

    async def _config_version(self, name: str) -> str | None:
        """The policy version a service reports on /healthz; "" when /healthz itself fails."""
        async with self.http.get(f"http://127.0.0.1:{self.ports[name]}/healthz") as r:
            if r.status != 200:
                if name not in self.healthz_broken:
                    self.healthz_broken.add(name)
                    log(f"{name} /healthz answers {r.status}: its policy version is not checked")
                return ""
            return (await r.json()).get("config_version")

    async def _wait_version(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for name in ("router", "budget", "gateway"):
            while (version := await self._config_version(name)) not in ("", self.version):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} runs policy {version}, not version {self.version}")
                await asyncio.sleep(0.1)

    async def apply_policy(self) -> str:
        """`sbctl config apply` of the bench policy copy (expands SB_SIMULATOR_URL)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shared.sbctl",
            "config",
            "apply",
            str(self.policy_dir),
            "--reason",
            "benchmark",
            "--env",
            self.env_name,
            "--json",
            cwd=REPO,
            env={**self.base_env, "SB_OPERATOR": "bench"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"sbctl config apply failed: {out.decode()}{err.decode()}")
        return str(json.loads(out)["version"])

    async def ingress_key(self, agent: str) -> str:
        """An API key of the ingress acting as `agent` (as `sbctl ingress keys add` issues it)."""
        body = IngressKeyAdd(agent=agent, by="bench", reason="benchmark")
        msg = await self.nc.request(names.ingress(self.env_name, "keys.add"), codec.encode(body), timeout=10)
        reply = codec.decode(msg.data, IngressKeysReply)
        if reply.error is not None:
            raise RuntimeError(f"no ingress key: {reply.error.message}")
        return reply.keys[0].key

    # --- simulator faults --------------------------------------------------------------

    async def add_fault(self, spec: dict) -> str:
        async with self.http.post(f"{self.sim_url}/_sim/faults", json=spec) as r:
            r.raise_for_status()
            return (await r.json())["id"]

    async def remove_fault(self, fault_id: str) -> None:
        async with self.http.delete(f"{self.sim_url}/_sim/faults/{fault_id}") as r:
            r.raise_for_status()

    # --- measurement -------------------------------------------------------------------

    def pids(self) -> dict[str, list[int]]:
        out = {name: [proc.pid] for name, proc in self.procs.items()}
        for name, comms in INFRA.items():
            out[name] = pids_named(comms)
        return out

    def sample(self, extra: dict[str, list[int]] | None = None) -> dict:
        """CPU seconds per process group and the machine's busy time at one instant, and the
        peak RSS of each of our processes so far."""
        cpu: dict[str, dict[int, float]] = {}
        for name, pids in {**self.pids(), **(extra or {})}.items():
            cpu[name] = {}
            for pid in pids:
                value = cpu_seconds(pid, children=name == "postgres")
                if value is not None:
                    cpu[name][pid] = value
        rss = self.sample_rss(extra)
        return {"t": time.monotonic(), "busy": machine_busy_s(), "cpu": cpu, "rss": rss}

    def sample_rss(self, extra: dict[str, list[int]] | None = None) -> dict[str, float]:
        """VmHWM of our processes now (summed over a process tree); keeps the run's maximum."""
        groups = {name: [proc.pid] for name, proc in self.procs.items()} | (extra or {})
        now = {}
        for name, pids in groups.items():
            now[name] = sum(peak_rss_mb(pid) or 0.0 for pid in pids)
            self.peak_rss[name] = max(self.peak_rss.get(name, 0.0), now[name])
        return now

    async def wait_quiet(self, timeout: float = 120.0) -> float:
        """Wait until the recorder has consumed every event (nothing pending or unacked, and the
        stream has stopped growing); returns the seconds waited."""
        if "recorder" not in self.procs:
            return 0.0
        js = self.nc.jetstream()
        stream = names.events_stream(self.env_name)
        t0 = time.monotonic()
        last = None
        while time.monotonic() - t0 < timeout:
            try:
                info = await js.consumer_info(stream, "recorder")
                state = (info.num_pending, info.num_ack_pending, info.delivered.stream_seq)
            except Exception:
                state = None
            if state is not None and state[:2] == (0, 0) and state == last:
                return round(time.monotonic() - t0, 2)
            last = state
            await asyncio.sleep(0.1)
        log(f"recorder still busy after {timeout:g}s")
        return round(time.monotonic() - t0, 2)

    def log_errors(self) -> dict[str, int]:
        """Error lines each service logged (JSON logs, level error) over the whole run."""
        out = {}
        for path in sorted(self.log_dir.glob("*.log")):
            with path.open("rb") as f:
                count = sum(1 for line in f if b'"level":"error"' in line)
            if count:
                out[path.stem] = count
        return out

    async def recorded_invocations(self) -> int:
        conn = await asyncpg.connect(self.base_env["SB_DATABASE_URL"])
        try:
            return await conn.fetchval("select count(*) from invocations where env = $1", self.env_name)
        finally:
            await conn.close()

    # --- cleanup -----------------------------------------------------------------------

    async def cleanup(self) -> None:
        """Remove the bench environment's stream, KV bucket, Redis keys and audit rows."""
        js = self.nc.jetstream()
        with contextlib.suppress(Exception):
            await js.delete_stream(names.events_stream(self.env_name))
        for bucket in (
            names.config_bucket(self.env_name),
            names.switches_bucket(self.env_name),
            names.rollout_bucket(self.env_name),
        ):
            with contextlib.suppress(Exception):
                await js.delete_key_value(bucket)
        r = aioredis.from_url(self.base_env["SB_REDIS_URL"])
        try:
            batch = [k async for k in r.scan_iter(match=keys.prefix(self.env_name) + "*", count=1000)]
            if batch:
                await r.delete(*batch)
        finally:
            await r.aclose()
        conn = await asyncpg.connect(self.base_env["SB_DATABASE_URL"])
        try:
            for table in ("events", "invocations", "config_versions", "policy_history", "ingress_keys"):
                await conn.execute(f"delete from {table} where env = $1", self.env_name)
        finally:
            await conn.close()
        log(f"cleaned up env {self.env_name} (stream, KV buckets, Redis keys, audit and history rows)")

"""Switchboard benchmark: the direct call to the provider simulator against Switchboard's healthy
and fallback paths, at several concurrencies and simulator latencies, everything on this machine.

Each point runs a separate load-generator process (bench/loadgen.py) for `--duration` seconds
after a warm-up, `--repeat` times (the median is reported, every repeat kept in the JSON). CPU
time and peak RSS of every process come from /proc. Results go to bench/results/<stamp>.json
and a markdown summary is printed at the end, with the issue's targets as PASS/MISS lines.

    python bench/run.py                      # the full matrix (make bench)
    python bench/run.py --smoke              # a few seconds: proves it still runs (CI)
    python bench/run.py --compare-litellm    # also LiteLLM proxy on the same workload
    python bench/run.py --duration 3 --repeat 1 --latency 0 --concurrency 1,64

Open loop (a fixed arrival rate, latency counted from each invocation's due time, any number in
flight; see bench/loadgen.py):

    python bench/run.py --concurrency '' --latency 50,1000 --rate 100,200   # chosen rates
    python bench/run.py --concurrency '' --latency 50,1000 --capacity       # search, then 25/50/80 %

`--capacity` raises the healthy path's rate by CAPACITY_STEP from `--capacity-start` until a
point fails to hold it (errors, a generator that cannot send on time, or latency that moves
through the run: a queue building up or draining), calls the last rate held the capacity, then runs the direct
call and the healthy path at 25, 50 and 80 % of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import orjson  # noqa: E402

from bench import litellm_proxy, report  # noqa: E402
from bench.loadgen import MAX_TOKENS, PROMPT  # noqa: E402
from bench.report import GATEWAY_PATHS  # noqa: E402  (invocations that reach the audit log)
from bench.stack import KEYS, SERVICES, Stack, answers, log, tree_pids, wait_machine_idle  # noqa: E402
from shared import names  # noqa: E402

WORKFLOW = "support-triage"  # tier 0 openai-sim/gpt-sim-large, tier 1 anthropic-sim/claude-sim-sonnet
PRIMARY_429 = {"kind": "429", "provider": "openai-sim"}  # no count: until removed
MAX_ERROR_RATE = 0.01  # of requests failed, or of invocations missing from the audit log
CAPACITY_STEP = 1.5  # rate multiplier between capacity-search points
CAPACITY_FRACTIONS = (0.25, 0.5, 0.8)
MAX_SEND_LAG_MS = 20.0  # open loop: p99 lag of the generator's sends behind the timetable
MAX_LATENCY_GROWTH_MS = 50.0  # open loop: last quarter's p50 against the first quarter's, either way


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured point")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each point")
    p.add_argument("--repeat", type=int, default=2, help="repeats per point (median reported)")
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated ('' for none)")
    p.add_argument("--rate", default="", help="open-loop arrival rates per second, comma-separated")
    p.add_argument("--open-paths", default="direct,healthy", help="paths run at each open-loop rate")
    p.add_argument("--capacity", action="store_true", help="search the healthy path's open-loop capacity")
    p.add_argument("--capacity-start", type=float, default=50.0, help="first rate of the search")
    p.add_argument("--latency", default="0,50", help="simulator latencies in ms, comma-separated")
    p.add_argument(
        "--paths",
        default="direct,healthy,ingress,fallback,direct-stream,stream,ingress-stream",
        help="comma-separated",
    )
    p.add_argument("--no-info-point", action="store_true", help="skip the healthy c=64 point at INFO")
    p.add_argument("--compare-litellm", action="store_true", help="also run LiteLLM proxy (optional)")
    p.add_argument("--smoke", action="store_true", help="a few seconds; fails only on crash or errors")
    p.add_argument(
        "--idle-wait",
        type=float,
        default=30.0,
        help="at most this long before each point, wait for other work on the machine to stop (0: don't)",
    )
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    if args.smoke:
        args.duration, args.warmup, args.repeat = 1.0, 0.3, 1
        args.concurrency, args.latency, args.no_info_point, args.idle_wait = "1,16", "0", True, 0.0
        args.rate = "50"
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.rate = [float(r) for r in args.rate.split(",") if r]
    args.open_paths = args.open_paths.split(",")
    args.latency = [float(x) for x in args.latency.split(",")]
    args.paths = args.paths.split(",")
    return args


def ensure_infra() -> None:
    """NATS, Redis and PostgreSQL must answer; if one does not, start them as `make infra` does."""
    urls = {
        "SB_NATS_URL": "nats://127.0.0.1:4222",
        "SB_REDIS_URL": "redis://127.0.0.1:6379/0",
        "SB_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/switchboard",
    }
    down = []
    for var, default in urls.items():
        parts = urlsplit(os.environ.get(var, default))
        if not answers(parts.hostname or "127.0.0.1", parts.port or 0):
            down.append(var)
    if down:
        log(f"not answering: {', '.join(down)}; running deploy/local/infra.sh")
        subprocess.run(
            ["bash", "deploy/local/infra.sh"], cwd=REPO, env={**os.environ, "PYTHON": sys.executable}
        )


class LoadGen:
    """The load-generator process, one JSON line per command and per answer."""

    def __init__(self, proc: asyncio.subprocess.Process, hello: dict) -> None:
        self.proc = proc
        self.pid = hello["pid"]
        self.codec_cost = hello["codec_cost"]

    @classmethod
    async def start(cls) -> LoadGen:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.loadgen",
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            limit=2**24,
        )
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError("the load generator did not start")
        return cls(proc, json.loads(line))

    async def run(self, target: dict, concurrency: int, duration: float, rate: float | None = None) -> dict:
        cmd = {"op": "run", "target": target, "concurrency": concurrency, "duration": duration, "rate": rate}
        self.proc.stdin.write(orjson.dumps(cmd) + b"\n")
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited with {await self.proc.wait()}")
        return json.loads(line)

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.stdin.write(b'{"op": "quit"}\n')
            await self.proc.stdin.drain()
            await asyncio.wait_for(self.proc.wait(), 30)


class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack, loadgen: LoadGen) -> None:
        self.args = args
        self.stack = stack
        self.loadgen = loadgen
        self.proxy: litellm_proxy.Proxy | None = None
        self.points: list[dict] = []
        self.capacities: dict[float, float | None] = {}  # sim ms -> open-loop rate held
        self.sent_to_gateway = 0
        self.ingress_key: str | None = None  # issued once the services run

    def targets(self) -> dict[str, dict]:
        messages = [{"role": "user", "content": PROMPT}]
        direct_body = {"model": "gpt-sim-large", "messages": messages, "max_tokens": MAX_TOKENS}
        nats_target = {
            "kind": "nats",
            "nats_url": self.stack.nats_url,
            "subject": names.invoke(self.stack.env_name, WORKFLOW),
            "workflow": WORKFLOW,
        }
        direct = {
            "kind": "http",
            "url": f"{self.stack.sim_url}/p/openai-sim/v1/chat/completions",
            "headers": {
                "Authorization": f"Bearer {KEYS['SB_OPENAI_SIM_API_KEY']}",
                "Content-Type": "application/json",
            },
            "body": orjson.dumps(direct_body).decode(),
            "expect": ["200"],
        }
        out = {
            "direct": direct,
            "healthy": {**nats_target, "expect": ["success/ok"]},
            "fallback": {**nats_target, "expect": ["fallback/rate_limited"]},
            # Streamed: time to first chunk, direct from the simulator and through the gateway.
            "direct-stream": {
                **direct,
                "body": orjson.dumps({**direct_body, "stream": True}).decode(),
                "stream": True,
                "expect": ["200/done"],
            },
            "stream": {**nats_target, "stream": True, "expect": ["success/ok"]},
        }
        if self.ingress_key is not None:  # the same invocation through the OpenAI-compatible API
            out["ingress"] = {
                "kind": "http",
                "url": f"http://127.0.0.1:{self.stack.other_ports['ingress']['api_port']}/v1/chat/completions",
                "headers": {
                    "Authorization": f"Bearer {self.ingress_key}",
                    "Content-Type": "application/json",
                },
                "body": orjson.dumps(
                    {"model": WORKFLOW, "messages": messages, "max_tokens": MAX_TOKENS}
                ).decode(),
                "expect": ["200"],
            }
            out["ingress-stream"] = {  # the same, streamed as server-sent events
                **out["ingress"],
                "body": orjson.dumps(
                    {"model": WORKFLOW, "messages": messages, "max_tokens": MAX_TOKENS, "stream": True}
                ).decode(),
                "stream": True,
                "expect": ["200/done"],
            }
        if self.proxy is not None:
            out["litellm-healthy"] = self.proxy.target("bench-primary", "gpt-sim-large")
            out["litellm-fallback"] = self.proxy.target("claude-sim-sonnet")
        return out

    def extra_pids(self) -> dict[str, list[int]]:
        extra = {"loadgen": [self.loadgen.pid]}
        if self.proxy is not None and self.proxy.proc is not None:
            extra["litellm"] = tree_pids(self.proxy.proc.pid)
        return extra

    async def point(
        self, path: str, sim_ms: float, concurrency: int, rep: int, level: str, rate: float | None = None
    ) -> dict:
        """One measured point: closed loop with `concurrency` callers, or open loop at `rate`/s."""
        target, stack, args = self.targets()[path], self.stack, self.args
        idle_before = await wait_machine_idle(args.idle_wait) if args.idle_wait > 0 else None
        fault = await stack.add_fault(PRIMARY_429) if path.endswith("fallback") else None
        try:
            if args.warmup > 0:
                warm = await self.loadgen.run(target, concurrency, args.warmup, rate)
                self.sent_to_gateway += warm["total"] if path in GATEWAY_PATHS else 0
                await stack.wait_quiet()
            before = stack.sample(self.extra_pids())
            result = await self.loadgen.run(target, concurrency, args.duration, rate)
            drain_s = await stack.wait_quiet()
            after = stack.sample(self.extra_pids())
        finally:
            if fault is not None:
                await stack.remove_fault(fault)
        stack.check_alive()
        if path in GATEWAY_PATHS:
            self.sent_to_gateway += result["total"]
        cpu = report.cpu_deltas(before, after)
        wall = after["t"] - before["t"]
        other = max(0.0, (after["busy"] - before["busy"]) - sum(cpu.values()))
        total = max(1, result["total"])
        point = {
            "path": path,
            "sim_ms": sim_ms,
            "concurrency": f"{rate:g}/s" if rate else concurrency,  # an open-loop point: its rate
            "repeat": rep,
            "log_level": level,
            **result,
            "drain_s": drain_s,
            "window_s": round(wall, 3),
            "cpu_s": cpu,
            "cpu_per_1k": {k: round(v / total * 1000, 4) for k, v in cpu.items()},
            "other_busy_pct": round(100 * other / wall, 1),
            "machine_busy_pct_before": idle_before,
            "peak_rss_mb": {k: round(v, 1) for k, v in after["rss"].items()},
        }
        lat = result["latency_ms"]
        load = f"rate {rate:g}/s" if rate else f"c={concurrency:<3}"
        log(
            f"{path:<16} sim {sim_ms:>3g} ms {load} rep {rep} {level:<7} "
            f"{result['throughput']:>8.0f}/s  p50 {lat.get('p50', 0):7.2f}  p99 {lat.get('p99', 0):7.2f} ms  "
            f"errors {result['errors']}/{result['total']}  loadgen CPU {result['loadgen_cpu_pct']:.0f}%"
            + (f"  tally {result['tally']}" if result["errors"] else "")
            + (
                f"  in flight {result['peak_in_flight']}"
                f"  send lag p99 {result['send_lag_ms'].get('p99', 0):.1f}"
                f"  growth {result['latency_growth_ms']:+.1f} ms"
                if rate
                else ""
            )
        )
        self.points.append(point)
        return point

    async def run(self) -> None:
        args, stack = self.args, self.stack
        services_up = False
        for sim_ms in args.latency:
            await stack.start_simulator(sim_ms)
            if not services_up:
                await stack.start_services("WARNING")
                services_up = True
                log(f"services ready on env {stack.env_name}, policy version {stack.version}")
                if "ingress" in args.paths or "ingress-stream" in args.paths:
                    self.ingress_key = await stack.ingress_key("bench")
            for rep in range(args.repeat):
                for c in args.concurrency:
                    for path in args.paths:
                        await self.point(path, sim_ms, c, rep, "WARNING")
            for rep in range(args.repeat):
                for rate in args.rate:
                    for path in args.open_paths:
                        await self.point(path, sim_ms, 0, rep, "WARNING", rate)
            if args.capacity:
                await self.capacity(sim_ms)
            if sim_ms == 0 and not args.no_info_point and "healthy" in args.paths:
                log("restarting the services at SB_LOG_LEVEL=INFO for one healthy c=64 point")
                stack.stop(*reversed(SERVICES))
                await stack.start_services("INFO")
                for rep in range(args.repeat):
                    await self.point("healthy", sim_ms, 64, rep, "INFO")
                stack.stop(*reversed(SERVICES))
                await stack.start_services("WARNING")
            stack.stop("simulator")

    async def capacity(self, sim_ms: float) -> None:
        """Raise the healthy path's open-loop rate until a point fails to hold it, then measure
        the direct call and the healthy path at fractions of the last rate held."""
        rate, held = self.args.capacity_start, None
        while True:
            p = await self.point("healthy", sim_ms, 0, 0, "WARNING", rate)
            ok = (
                p["errors"] <= MAX_ERROR_RATE * max(1, p["total"])
                and p["send_lag_ms"].get("p99", 0.0) <= MAX_SEND_LAG_MS
                and abs(p["latency_growth_ms"]) <= MAX_LATENCY_GROWTH_MS
            )
            p["capacity_search"] = "held" if ok else "not held"
            if not ok:
                break
            held, rate = rate, round(rate * CAPACITY_STEP)
        self.capacities[sim_ms] = held
        log(f"sim {sim_ms:g} ms: open-loop capacity of the healthy path {held}/s (not held at {rate:g}/s)")
        if held is None:
            return
        for rep in range(self.args.repeat):
            for fraction in CAPACITY_FRACTIONS:
                for path in self.args.open_paths:
                    await self.point(path, sim_ms, 0, rep, "WARNING", round(held * fraction))


def print_summary(doc: dict) -> None:
    s = doc["settings"]
    rows = doc["summary"]
    print(f"\n## Switchboard benchmark {doc['stamp']}\n")
    print(
        f"{doc['host']['cores']} cores, Python {doc['host']['python']}; everything on loopback. "
        f"{s['duration']:g} s per point after {s['warmup']:g} s warm-up, median of {s['repeat']} "
        f"repeat(s). Workflow {WORKFLOW}. Services run at SB_LOG_LEVEL=WARNING (the per-invocation "
        "INFO log line off) except rows marked (log INFO). Load generator: a separate process "
        "(keep-alive HTTP/1.1 with httptools for HTTP, raw nats-py + orjson for NATS); `+p50/+p99` = "
        "latency added over "
        "the direct call at the same concurrency and simulator latency; `other busy %` = machine CPU "
        "used by processes outside the benchmark during the point (noise).\n"
    )
    cost = doc["codec_cost"]
    print(
        f"Load-generator request build + reply parse: orjson {cost['orjson_us']} us, "
        f"SDK pydantic models {cost['sdk_pydantic_us']} us per invocation.\n"
    )
    print("### Throughput and latency\n")
    print(report.latency_table(rows) + "\n")
    if any(r["first_chunk_ms"]["p50"] is not None for r in rows):
        print("### Streaming: time to first chunk\n")
        print(
            "`stream` is a streamed invocation over NATS (chunks to the caller's inbox, then the final "
            "result); `ingress-stream` the same through the ingress as OpenAI server-sent events; "
            "`direct-stream` the simulator's own server-sent events. `+first p50` = added "
            "over `direct-stream` at the same concurrency and simulator latency.\n"
        )
        print(report.streaming_table(rows) + "\n")
    if any("offered_rate" in r for r in rows):
        print("### Open loop (fixed arrival rate; latency from each invocation's due time)\n")
        caps = {float(k): v for k, v in doc.get("capacity", {}).items()}
        if caps:
            found = ", ".join(
                f"sim {k:g} ms: {v if v is not None else 'below the first rate'}/s" for k, v in caps.items()
            )
            print(f"Healthy-path capacity (highest rate held): {found}.\n")
        print(report.open_loop_table(rows, caps) + "\n")
    print("### Where the time goes (ms; medians of each point's p50)\n")
    print(
        "`NATS + queueing` = client p50 - gateway p50 (transport, gateway queueing and reply); "
        "`gateway w/o provider` = plan + budget + bookkeeping before the reply; `provider call "
        "overhead` = the gateway's provider call(s) - the direct call's p50 (per call made).\n"
    )
    print(report.breakdown_table(rows) + "\n")
    print("### CPU seconds per 1,000 invocations (from /proc utime+stime)\n")
    print(report.cpu_table(rows) + "\n")
    print("### Peak RSS per process (VmHWM)\n")
    print(report.rss_table(doc["peak_rss_mb"]) + "\n")
    if doc["recorder_check"]:
        rc = doc["recorder_check"]
        lost = "" if rc["recorded"] >= rc["sent"] else "  WARNING: audit rows missing"
        print(f"Recorder: {rc['recorded']} invocation rows in PostgreSQL for {rc['sent']} sent.{lost}\n")
    if doc.get("log_errors"):
        counts = ", ".join(f"{k} {v}" for k, v in doc["log_errors"].items())
        print(f"WARNING: error lines in service logs ({counts}); see the logs named below.\n")
    if len(doc.get("source_digests", [])) > 1:
        print(
            f"WARNING: services/ or shared/ changed during the run (digests {doc['source_digests']}): "
            "processes started at different times ran different code.\n"
        )
    if doc.get("litellm"):
        print("### LiteLLM proxy comparison\n")
        print(f"LiteLLM: {doc['litellm']}\n")
        if any(r["path"].startswith("litellm") for r in rows):
            print(report.comparison_table(rows) + "\n")
    if doc["targets"]:
        print("### Targets\n")
        print(report.targets_text(doc["targets"]) + "\n")
    if doc["crashed"]:
        print(f"CRASHED: {doc['crashed']}\n")


async def main(args: argparse.Namespace) -> int:
    ensure_infra()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    work = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    doc: dict = {
        "stamp": stamp,
        "host": {"cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "settings": {
            "duration": args.duration,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "concurrency": args.concurrency,
            "open_loop_rates": args.rate,
            "capacity_search": args.capacity,
            "sim_latency_ms": args.latency,
            "paths": args.paths,
            "log_level": "WARNING (plus one healthy c=64 point at INFO)",
            "workflow": WORKFLOW,
            "smoke": args.smoke,
        },
        "crashed": None,
        "litellm": None,
        "recorder_check": None,
        "log_errors": {},
        "source_digests": [],
    }
    bench = None
    try:
        async with Stack(f"bench{stamp.lower()}", work) as stack:
            doc["env"] = stack.env_name
            loadgen = await LoadGen.start()
            doc["codec_cost"] = loadgen.codec_cost
            bench = Bench(args, stack, loadgen)
            try:
                if args.compare_litellm:
                    await start_litellm(bench, stack, work, doc)
                await bench.run()
                if bench.sent_to_gateway:
                    await stack.wait_quiet()
                    recorded = await stack.recorded_invocations()
                    doc["recorder_check"] = {"sent": bench.sent_to_gateway, "recorded": recorded}
            finally:
                await loadgen.close()
                if bench.proxy is not None:
                    bench.proxy.stop()
                doc["log_errors"] = stack.log_errors()
                doc["source_digests"] = stack.sources
                doc["peak_rss_mb"] = {k: round(v, 1) for k, v in stack.peak_rss.items()}
    except (Exception, asyncio.CancelledError) as exc:  # Ctrl-C: still report what was measured
        doc["crashed"] = f"{type(exc).__name__}: {exc}"
        log(f"crashed: {doc['crashed']}; logs in {work / 'logs'}")
    doc.setdefault("codec_cost", {"orjson_us": None, "sdk_pydantic_us": None})
    doc.setdefault("peak_rss_mb", {})
    doc["points"] = bench.points if bench else []
    doc["capacity"] = {str(k): v for k, v in bench.capacities.items()} if bench else {}
    doc["summary"] = report.summarize(doc["points"])
    caps = bench.capacities if bench else {}
    doc["targets"] = [] if args.smoke else report.targets(doc["summary"], doc["peak_rss_mb"], caps)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{stamp}.json"
    out.write_text(json.dumps(doc, indent=1))
    print_summary(doc)
    print(f"raw results: {out}; service logs: {work / 'logs'}")
    errors = sum(p["errors"] for p in doc["points"])
    total = sum(p["total"] for p in doc["points"]) or 1
    if doc["crashed"] or not doc["points"]:
        return 1
    if errors / total > MAX_ERROR_RATE:
        log(f"errors: {errors} of {total} requests ({errors / total:.1%})")
        return 1
    rc = doc["recorder_check"]
    if rc and rc["sent"] - rc["recorded"] > MAX_ERROR_RATE * rc["sent"]:
        log(f"the recorder wrote {rc['recorded']} invocation rows for {rc['sent']} invocations")
        return 1
    return 0


async def start_litellm(bench: Bench, stack: Stack, work: Path, doc: dict) -> None:
    """Optional: a failure here is reported, and Switchboard's results still come out."""
    try:
        exe = await asyncio.to_thread(litellm_proxy.ensure_installed)
        proxy = litellm_proxy.Proxy(exe, work)
        await proxy.start(stack.sim_url)
    except litellm_proxy.Unavailable as exc:
        doc["litellm"] = f"NOT RUN: {exc}"
        log(f"LiteLLM comparison skipped: {exc}")
        return
    bench.proxy = proxy
    bench.args.paths = [*bench.args.paths, "litellm-healthy", "litellm-fallback"]
    doc["litellm"] = f"proxy from {exe.parent.parent}, one worker, num_retries 0, cooldowns off, no database"


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except KeyboardInterrupt:
        sys.exit(130)

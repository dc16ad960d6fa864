"""Run the whole system locally: every service as its own process, a Prometheus scraping them
with the shipped alerts loaded, the example policy applied, a demo workload across two workflows
(with a forced fallback and a budget refusal), two refunds held for review (one approved through
the reviewer API, one left to time out), a refund and a letter left pending for a person to
decide in the reviewer console (its address and a reviewer token are printed), a summary and
what `sbctl stats` and `sbctl invocations` make of it, then serve until Ctrl-C (or exit after
the demo with --exit-after-demo) and stop every process.

Usage: python deploy/local/run.py [--exit-after-demo] [--invocations N] [--auth]

--auth runs the same with NATS authentication on: a nats-server of the run's own (port 14222)
with the users of deploy/nats/roles.yaml, passwords made on first use in .run/nats-auth/, and
every service, sbctl and the demo agent connecting as its own role.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import yaml  # noqa: E402

from services import catalog  # noqa: E402
from shared.simctl import SimulatorControl  # noqa: E402
from switchboard_sdk import Client  # noqa: E402

SERVICES = {  # name -> port env var, port (every service's own from services/catalog.py)
    "simulator": ("SB_SIM_PORT", 9180),
    **{e.name: ("SB_HTTP_PORT", e.ports["http_port"]) for e in catalog.SERVICES},
}
PROMETHEUS_PORT = 9190
ALERTS = REPO / "deploy/prometheus/alerts.yml"
OTHER_PORTS = [p for e in catalog.SERVICES for f, p in e.ports.items() if f != "http_port"]
HITL_API = f"http://127.0.0.1:{catalog.entry('hitl').ports['api_port']}"
INGRESS_API = f"http://127.0.0.1:{catalog.entry('ingress').ports['api_port']}/v1"
DEMO_KEYS = {"SB_OPENAI_SIM_API_KEY": "sk-demo-openai", "SB_ANTHROPIC_SIM_API_KEY": "sk-demo-anthropic"}
PROMPTS = [
    "Customer says the invoice total is wrong after the plan change.",
    "Password reset email never arrives; user tried three times.",
    "Summarise the attached incident report in three bullet points.",
    "Draft a polite reply declining the refund request.",
    "Classify: app crashes when uploading a 2 GB file.",
]


def log(msg: str) -> None:
    print(f"[run] {msg}", flush=True)


class Processes:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, env: dict[str, str]) -> None:
        port_var, port = SERVICES[name]
        child_env = {**env, port_var: str(port)}
        out = open(self.log_dir / f"{name}.log", "ab")  # the child owns it
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=REPO,
            env=child_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, name: str, timeout: float = 30.0) -> None:
        _, port = SERVICES[name]
        path = "/healthz" if name == "simulator" else "/readyz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                logfile = self.log_dir / f"{name}.log"
                raise SystemExit(f"{name} exited with {proc.returncode}; see {logfile}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{name} not ready after {timeout}s; see {self.log_dir / (name + '.log')}")

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(list(self.procs.items())):
            try:
                code = proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            log(f"stopped {name} (exit {code})")


def prometheus_config(run_dir: Path) -> Path:
    """Scrape every local service (job "switchboard", as in production), with alerts.yml loaded."""
    targets = [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"service": name}}
        for name, (_, port) in SERVICES.items()
        if name != "simulator"  # it has no /metrics
    ]
    config = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "15s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "switchboard", "static_configs": targets}],
    }
    path = run_dir / "prometheus.yml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def start_prometheus(run_dir: Path, log_dir: Path) -> subprocess.Popen | None:
    binary = shutil.which("prometheus")
    if binary is None:
        log("prometheus not installed (deploy/local/infra.sh installs it); running without it")
        return None
    config = prometheus_config(run_dir)
    out = open(log_dir / "prometheus.log", "ab")  # the child owns it
    return subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={run_dir / 'prometheus-data'}",
            "--storage.tsdb.retention.time=2d",
            f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
        ],
        cwd=run_dir,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def prometheus_state(timeout: float = 30.0) -> str:
    """'N/M targets up, K alert rules loaded' once every target has been scraped up (or timeout)."""
    base = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/targets", timeout=2) as r:
                targets = json.load(r)["data"]["activeTargets"]
            with urllib.request.urlopen(f"{base}/rules?type=alert", timeout=2) as r:
                rules = [rule for g in json.load(r)["data"]["groups"] for rule in g["rules"]]
        except OSError:
            targets, rules = [], []
        up = [t for t in targets if t["health"] == "up"]
        if (targets and len(up) == len(targets)) or time.monotonic() > deadline:
            down = ", ".join(t["labels"].get("service", "?") for t in targets if t["health"] != "up")
            return f"{len(up)}/{len(targets)} targets up{' (down: ' + down + ')' if down else ''}, " + (
                f"{len(rules)} alert rules loaded"
            )
        time.sleep(0.5)


AUTH_NATS_PORT = 14222


def start_auth_nats(root: Path) -> subprocess.Popen:
    """A nats-server with the generated users (credentials in root/credentials, kept)."""
    import shutil

    binary = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    credentials = root / "credentials"
    generate = [sys.executable, str(REPO / "deploy/nats/generate.py"), "--create", "--agent", "demo-agent"]
    auth = subprocess.run(
        [*generate, "--credentials-dir", str(credentials)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (root / "auth.conf").write_text(auth)
    (root / "server.conf").write_text(
        f'listen: "127.0.0.1:{AUTH_NATS_PORT}"\n'
        f'jetstream {{ store_dir: "{root / "js"}" }}\n'
        'include "auth.conf"\n'
    )
    proc = subprocess.Popen(
        [binary, "-c", str(root / "server.conf"), "-l", str(root / "nats.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not port_busy(AUTH_NATS_PORT):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"nats-server with authentication did not start; see {root / 'nats.log'}")
        time.sleep(0.05)
    return proc


async def show_refusal(env: dict[str, str]) -> None:
    """The demo agent tries to settle a budget itself: the server refuses it."""
    import nats

    from shared import names
    from shared.settings import Settings
    from switchboard_sdk import nats_auth

    refused = asyncio.get_running_loop().create_future()

    async def on_error(exc: Exception) -> None:
        if not refused.done():
            refused.set_result(str(exc))

    user = nats_auth.agent_user("demo-agent")
    options = nats_auth.connect_options(
        Settings(**{"nats_credentials_dir": env["SB_NATS_CREDENTIALS_DIR"]}), user
    )
    nc = await nats.connect(env["SB_NATS_URL"], error_cb=on_error, **options)
    try:
        await nc.publish(names.budget_settle(env["SB_ENV"]), b"{}")
        await nc.flush()
        log(f"as {user}, publishing a budget settle: {await asyncio.wait_for(refused, 5)}")
    finally:
        await nc.close()


def port_busy(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def demo(env: dict[str, str], count: int) -> list:
    sim = SimulatorControl(f"http://127.0.0.1:{SERVICES['simulator'][1]}")
    results = []
    async with Client(env["SB_NATS_URL"], env=env["SB_ENV"], agent="demo-agent") as sb:
        for i in range(count):
            workflow = "support-triage" if i % 2 == 0 else "research-summary"
            results.append(
                await sb.invoke(
                    workflow,
                    PROMPTS[i % len(PROMPTS)],
                    session_id=f"demo-{i % 3}",
                    metadata={"demo": True, "n": i},
                )
            )
        log("forcing a fallback: anthropic-sim answers the next call with HTTP 503")
        await sim.add_fault("503", provider="anthropic-sim", count=1)
        results.append(
            await sb.invoke(
                "research-summary", "Summarise the Q3 incident review.", session_id="demo-fallback"
            )
        )
        log("asking for more tokens than support-triage's per-invocation ceiling allows")
        results.append(
            await sb.invoke(
                "support-triage", "Write a very long essay.", max_tokens=50_000, session_id="demo-budget"
            )
        )
    await sim.aclose()
    return results


def sbctl_out(env: dict[str, str], *args: str) -> str:
    shown = subprocess.run(
        [sys.executable, "-m", "shared.sbctl", *args, "--env", env["SB_ENV"]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return shown.stdout


def review_demo(env: dict[str, str], run_dir: Path) -> list:
    """Two refunds held by the `large-refund` review gate: one approved by a reviewer through the
    HTTP API, one left alone until its timeout escalates it and the next queue's rejects it."""
    demo_config = run_dir / "demo-config"
    shutil.rmtree(demo_config, ignore_errors=True)
    shutil.copytree(REPO / "config", demo_config)
    reviews = yaml.safe_load((demo_config / "reviews.yaml").read_text())
    for queue in reviews["review_queues"].values():
        queue.update(timeout_s=5, sla_s=3)
    (demo_config / "reviews.yaml").write_text(yaml.safe_dump(reviews, sort_keys=False))
    log("review gates: review timeouts shortened to 5 s for the demo (policy version 2)")
    sbctl_out(env, "config", "apply", str(demo_config), "--reason", "demo: review timeouts of 5 s")
    reviewer = f"demo-reviewer-{int(time.time())}"  # a new one each run: a token is shown only once
    added = sbctl_out(
        env, "hitl", "reviewers", "add", reviewer, "--queues", "payments,payments-leads", "--json"
    )
    issued = json.loads(added)
    started = datetime.now(UTC) - timedelta(seconds=1)
    results = asyncio.run(_reviews(env, issued["token"]))
    audit = run_dir / "hitl-audit.csv"
    until = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    log(f"the review audit as CSV: sbctl hitl export --from {started.isoformat()} --to {until} --out {audit}")
    sbctl_out(env, "hitl", "export", "--from", started.isoformat(), "--to", until, "--out", str(audit))
    print(audit.read_text(), flush=True)
    log("review gates: the example policy's timeouts again (policy version 3), for a person to review")
    sbctl_out(env, "config", "apply", "config", "--reason", "demo: a review left for the console")
    waiting = asyncio.run(_left_for_console(env))
    log(f"reviewer console: {HITL_API}/console/ - sign in as {reviewer} with the token {issued['token']}")
    for held in waiting:
        log(f"review {held.review_id} waits there for a decision ({held.invocation_id})")
    return results


async def _left_for_console(env: dict[str, str]) -> list:
    """A refund held before the model (pre gate) and a letter held after it (post gate), both
    left pending for a person to decide in the reviewer console."""
    async with Client(env["SB_NATS_URL"], env=env["SB_ENV"], agent="demo-agent") as sb:
        refund = await sb.invoke(
            "refunds",
            "Refund order 1044: <b>damaged</b> in transit, photos attached.",
            metadata={"amount": 750},
        )
        letter = await sb.invoke(
            "refunds", "Write to the customer of order 1044 about the refund.", metadata={"channel": "email"}
        )
    return [refund, letter]


async def _reviews(env: dict[str, str], token: str) -> list:
    async with Client(env["SB_NATS_URL"], env=env["SB_ENV"], agent="demo-agent") as sb:
        approved = await sb.invoke(
            "refunds", "Refund order 1042: the parcel never arrived.", metadata={"amount": 900}
        )
        ignored = await sb.invoke("refunds", "Refund order 1043: changed my mind.", metadata={"amount": 1200})
        log(
            f"held for review: {approved.invocation_id} and {ignored.invocation_id} ({approved.status.value})"
        )
        print(await asyncio.to_thread(sbctl_out, env, "hitl", "queues"), flush=True)
        log(f"a reviewer approves {approved.review_id} through the API (POST /v1/reviews/ID/approve)")
        async with httpx.AsyncClient(base_url=HITL_API, headers={"Authorization": f"Bearer {token}"}) as http:
            (
                await http.post(f"/v1/reviews/{approved.review_id}/approve", json={"comment": "parcel lost"})
            ).raise_for_status()
        final_approved = await sb.result(approved.invocation_id, wait=30)
        log(f"{approved.invocation_id}: {final_approved.status.value} via {final_approved.provider}")
        log("nobody looks at the other: it times out, escalates to payments-leads, and times out there")
        final_ignored = await sb.result(ignored.invocation_id, wait=30)
        reason = final_ignored.error.message if final_ignored.error else ""
        log(f"{ignored.invocation_id}: {final_ignored.status.value} ({reason})")
    return [final_approved, final_ignored]


def ingress_demo(env: dict[str, str]) -> None:
    """One call through the OpenAI-compatible ingress, with a key issued by sbctl."""
    issued = json.loads(
        sbctl_out(
            env, "ingress", "keys", "add", "--agent", "demo-agent", "--reason", "make run demo", "--json"
        )
    )
    body = {"model": "support-triage", "messages": [{"role": "user", "content": PROMPTS[0]}]}
    request = urllib.request.Request(
        f"{INGRESS_API}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {issued['key']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        reply = json.loads(response.read())
    board = reply["switchboard"]
    log(
        f"OpenAI-compatible ingress ({INGRESS_API}, key {issued['key_id']} as demo-agent): "
        f"{board['invocation_id']} {board['status']} via {board['provider']}/{reply['model']}"
    )
    log(f'  any OpenAI client: OpenAI(base_url="{INGRESS_API}", api_key="<key>"), model = the workflow')


def summary(results: list) -> str:
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for r in results:
        groups[(r.workflow, r.status.value)].append(r)
    lines = [f"{'WORKFLOW':<18} {'STATUS':<16} {'COUNT':>5} {'P50 MS':>8}  SERVED BY"]
    for (workflow, status), rs in sorted(groups.items()):
        served = Counter(f"{r.provider}/{r.model}" for r in rs if r.provider)
        served_by = ", ".join(f"{k} x{v}" for k, v in served.items()) or "-"
        p50 = statistics.median(r.latency_ms for r in rs)
        lines.append(f"{workflow:<18} {status:<16} {len(rs):>5} {p50:>8.1f}  {served_by}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exit-after-demo", action="store_true", help="stop everything after the demo")
    parser.add_argument("--invocations", type=int, default=12)
    parser.add_argument(
        "--auth", action="store_true", help="NATS authentication on, every process as its role"
    )
    args = parser.parse_args()

    env = {**os.environ}
    env.setdefault("SB_ENV", "dev")
    env.setdefault("SB_NATS_URL", "nats://127.0.0.1:4222")
    nats_proc = None
    if args.auth:
        auth_dir = REPO / ".run" / "nats-auth"
        auth_dir.mkdir(parents=True, exist_ok=True)
        if port_busy(AUTH_NATS_PORT):
            raise SystemExit(f"port {AUTH_NATS_PORT} already in use - is another `make run` running?")
        nats_proc = start_auth_nats(auth_dir)
        env["SB_NATS_URL"] = f"nats://127.0.0.1:{AUTH_NATS_PORT}"
        env["SB_NATS_CREDENTIALS_DIR"] = str(auth_dir / "credentials")
        os.environ["SB_NATS_CREDENTIALS_DIR"] = env["SB_NATS_CREDENTIALS_DIR"]  # the demo's SDK client
        log(f"NATS authentication on ({env['SB_NATS_URL']}): every process connects as its own role")
    for key, value in DEMO_KEYS.items():
        env.setdefault(key, value)
    busy = [f"{n} ({p})" for n, (_, p) in SERVICES.items() if port_busy(p)]
    busy += [f"prometheus ({PROMETHEUS_PORT})"] if port_busy(PROMETHEUS_PORT) else []
    busy += [str(p) for p in OTHER_PORTS if port_busy(p)]
    if busy:
        raise SystemExit(f"ports already in use: {', '.join(busy)} - is another `make run` running?")

    log_dir = REPO / ".run" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = Processes(log_dir)
    prometheus = None
    # Ctrl-C and SIGTERM both end the run at once, whatever it is doing, and every process it
    # started is stopped. SIGINT is set explicitly: a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for name in SERVICES:
            procs.start(name, env)
        prometheus = start_prometheus(REPO / ".run", log_dir)
        for name in SERVICES:
            procs.wait_ready(name)
        log(f"all services ready (env {env['SB_ENV']}); logs in {log_dir}")
        sbctl = [sys.executable, "-m", "shared.sbctl"]
        subprocess.run(
            [*sbctl, "config", "apply", "config", "--reason", "make run", "--env", env["SB_ENV"]],
            cwd=REPO,
            env=env,
            check=True,
        )
        results = asyncio.run(demo(env, args.invocations))
        results += review_demo(env, log_dir.parent)
        ingress_demo(env)
        if args.auth:
            asyncio.run(show_refusal(env))
        print("\n" + summary(results) + "\n", flush=True)
        example = next(r for r in results if r.status.value == "fallback")
        trace_cmd = [*sbctl, "trace", example.invocation_id, "--env", env["SB_ENV"]]
        log(f"the fallback as recorded in PostgreSQL: sbctl {' '.join(trace_cmd[3:])}")
        deadline = time.monotonic() + 15
        while True:
            shown = subprocess.run(trace_cmd, cwd=REPO, env=env, capture_output=True, text=True)
            if shown.returncode == 0 or time.monotonic() > deadline:
                print(shown.stdout or shown.stderr, flush=True)
                break
            time.sleep(0.2)
        recorded = [
            *sbctl,
            "invocations",
            "--since",
            "1h",
            "--limit",
            "1000",
            "--json",
            "--env",
            env["SB_ENV"],
        ]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # every demo invocation in the audit log
            shown = subprocess.run(recorded, cwd=REPO, env=env, capture_output=True, text=True)
            if shown.returncode == 0 and len(json.loads(shown.stdout)["invocations"]) >= len(results):
                break
            time.sleep(0.2)
        for cmd in (["stats", "--since", "1h"], ["invocations", "--since", "1h", "--limit", "8"]):
            log(f"sbctl {' '.join(cmd)} --env {env['SB_ENV']}")
            subprocess.run([*sbctl, *cmd, "--env", env["SB_ENV"]], cwd=REPO, env=env)
        if prometheus is not None:
            log(f"prometheus: http://127.0.0.1:{PROMETHEUS_PORT} - {prometheus_state()}")
        if args.exit_after_demo:
            return
        log(
            f"serving: gateway metrics at http://127.0.0.1:9101/metrics, the reviewer console at"
            f" {HITL_API}/console/; Ctrl-C to stop"
        )
        while all(p.poll() is None for p in procs.procs.values()):
            time.sleep(0.5)
        log("a service exited; stopping the rest")
    except KeyboardInterrupt:
        pass
    finally:
        procs.stop_all()
        if prometheus is not None:
            prometheus.terminate()
            log(f"stopped prometheus (exit {prometheus.wait(timeout=25)})")
        if nats_proc is not None:
            nats_proc.terminate()
            nats_proc.wait(timeout=10)


if __name__ == "__main__":
    main()

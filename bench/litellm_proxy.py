"""LiteLLM proxy for `--compare-litellm`: installed into a throwaway virtualenv outside the
repository, configured with the same two-tier fallback against the same simulator.

What it needs here: a master key (the proxy refuses to start without one, database or not);
LITELLM_LOCAL_MODEL_COST_MAP=True (else it fetches its model cost map over the network at
import); num_retries 0 (else a 429 primary is retried with Retry-After sleeps) and cooldowns
off, so that, as in Switchboard's bench policy, every call walks the chain.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import yaml

from bench.stack import KEYS, free_port, log

VENV = Path(
    os.environ.get("SB_BENCH_LITELLM_VENV", Path.home() / ".cache" / "switchboard-bench" / "litellm-venv")
)
MASTER_KEY = "sk-bench-litellm-master"
PRIMARY, FALLBACK = "bench-primary", "bench-fallback"
INSTALL_TIMEOUT_S = 1200


class Unavailable(Exception):
    """LiteLLM could not be installed or started; the comparison is skipped."""


def _env() -> dict[str, str]:
    drop = ("DATABASE_URL", "OTEL_", "LITELLM_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return env | {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": MASTER_KEY,
        **KEYS,
    }


def ensure_installed() -> Path:
    """The `litellm` executable of the throwaway venv, installing `litellm[proxy]` if needed."""
    exe = VENV / "bin" / "litellm"
    probe = [str(VENV / "bin" / "python"), "-c", "import litellm.proxy.proxy_server"]
    if exe.exists() and subprocess.run(probe, capture_output=True, env=_env()).returncode == 0:
        return exe
    log(f"installing litellm[proxy] into {VENV} (once; this takes a few minutes)")
    try:
        if not (VENV / "bin" / "python").exists():
            subprocess.run(["python3", "-m", "venv", str(VENV)], check=True, capture_output=True)
        subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
            check=True,
            capture_output=True,
            timeout=INSTALL_TIMEOUT_S,
        )
        subprocess.run(probe, check=True, capture_output=True, env=_env())
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise Unavailable(f"installing litellm[proxy] failed: {exc} {detail.decode()[-500:]}") from exc
    return exe


def write_config(path: Path, sim_url: str) -> None:
    """openai-sim gpt-sim-large, falling back to anthropic-sim claude-sim-sonnet; no retries,
    no cooldowns, no database, no telemetry."""
    config = {
        "model_list": [
            {
                "model_name": PRIMARY,
                "litellm_params": {
                    "model": "openai/gpt-sim-large",
                    "api_base": f"{sim_url}/p/openai-sim/v1",
                    "api_key": "os.environ/SB_OPENAI_SIM_API_KEY",
                },
            },
            {
                "model_name": FALLBACK,
                "litellm_params": {
                    "model": "anthropic/claude-sim-sonnet",
                    "api_base": f"{sim_url}/p/anthropic-sim",
                    "api_key": "os.environ/SB_ANTHROPIC_SIM_API_KEY",
                },
            },
        ],
        "router_settings": {
            "num_retries": 0,
            "fallbacks": [{PRIMARY: [FALLBACK]}],
            "disable_cooldowns": True,
        },
        "litellm_settings": {"num_retries": 0, "telemetry": False, "drop_params": True},
        "general_settings": {"master_key": MASTER_KEY},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


class Proxy:
    """One LiteLLM proxy process (one worker) on a free loopback port."""

    def __init__(self, exe: Path, work_dir: Path) -> None:
        self.exe = exe
        self.work_dir = work_dir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, config: Path) -> None:
        out = open(self.work_dir / "logs" / "litellm.log", "ab")  # the child owns it
        args = [
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--num_workers",
            "1",
        ]
        self.proc = subprocess.Popen(
            [str(self.exe), *args], cwd=self.work_dir, env=_env(), stdout=out, stderr=subprocess.STDOUT
        )
        out.close()

    async def start(self, sim_url: str, timeout: float = 90.0) -> None:
        config = self.work_dir / "litellm.yaml"
        write_config(config, sim_url)
        self._spawn(config)
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise Unavailable(f"litellm exited with {self.proc.returncode}; see its log")
                try:
                    async with http.get(f"{self.url}/health/liveliness") as r:
                        if r.status == 200:
                            return
                except (TimeoutError, aiohttp.ClientError):
                    pass
                await asyncio.sleep(0.5)
        raise Unavailable(f"litellm not ready after {timeout:g}s")

    def target(self, *expect_models: str) -> dict:
        """A load-generator target; a reply counts as expected when its `model` is one of these
        (the proxy names the model group when the primary answers, the model after a fallback)."""
        import orjson

        from bench.loadgen import MAX_TOKENS, PROMPT

        body = {"model": PRIMARY, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS}
        return {
            "kind": "http",
            "url": f"{self.url}/v1/chat/completions",
            "headers": {"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"},
            "body": orjson.dumps(body).decode(),
            "by_model": True,
            "expect": [f"200/{m}" for m in expect_models],
        }

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

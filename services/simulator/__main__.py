"""Run the provider simulator: ``python -m services.simulator``.

Settings come from the environment so compose files, drills and benchmarks can start it
without flags: ``SB_SIM_HOST`` (127.0.0.1), ``SB_SIM_PORT`` (9180), ``SB_SIM_LATENCY_MS``
(0). Dev/test only: it accepts any API key, so it binds loopback unless told otherwise.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import orjson

from services.simulator.app import start


def _log(event: str, **fields: object) -> None:
    sys.stdout.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
    sys.stdout.flush()


async def _serve(host: str, port: int, latency_ms: float) -> None:
    runner, actual_port = await start(host, port, latency_ms)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _log("simulator.started", host=host, port=actual_port, latency_ms=latency_ms)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    _log("simulator.stopped")


def _settings() -> tuple[str, int, float]:
    host = os.environ.get("SB_SIM_HOST", "127.0.0.1")
    try:
        port = int(os.environ.get("SB_SIM_PORT", "9180"))
        latency_ms = float(os.environ.get("SB_SIM_LATENCY_MS", "0"))
    except ValueError as exc:
        raise SystemExit(f"simulator: bad SB_SIM_PORT / SB_SIM_LATENCY_MS: {exc}") from exc
    if not 0 <= port <= 65535 or latency_ms < 0:
        raise SystemExit("simulator: SB_SIM_PORT must be 0..65535, SB_SIM_LATENCY_MS >= 0")
    return host, port, latency_ms


def main() -> None:
    host, port, latency_ms = _settings()
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(host, port, latency_ms))


if __name__ == "__main__":
    main()

"""sbctl status: every replica of every service in the environment, as the NATS service API
($SRV.STATS) reports it: id, version, host, uptime and per-endpoint requests, errors and
average processing time."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC

import orjson
from nats.micro.service import ServiceStats

from shared import names
from shared.bus import Bus
from shared.sbctl.context import connect
from shared.sbctl.output import emit_json, table
from shared.service_api import SERVICE_PREFIX


async def replicas(bus: Bus, env: str, wait_s: float) -> list[ServiceStats]:
    """Every Switchboard replica of `env` that answers $SRV.STATS within `wait_s`."""
    inbox = bus.nc.new_inbox()
    answers: list[bytes] = []

    async def collect(msg) -> None:
        answers.append(msg.data)

    sub = await bus.nc.subscribe(inbox, cb=collect)
    try:
        await bus.nc.publish(names.service_api("STATS"), b"", reply=inbox)
        await asyncio.sleep(wait_s)
    finally:
        await sub.unsubscribe()
    found = []
    for data in answers:
        try:
            stats = ServiceStats.from_dict(orjson.loads(data))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # not a service API answer we can read: someone else's service
        if stats.name.startswith(SERVICE_PREFIX) and (stats.metadata or {}).get("env") == env:
            found.append(stats)
    return sorted(found, key=lambda s: (s.name, s.started))


def _replica(stats: ServiceStats) -> dict:
    meta = stats.metadata or {}
    started = stats.started.replace(tzinfo=UTC)
    return {
        "service": stats.name.removeprefix(SERVICE_PREFIX),
        "id": stats.id,
        "version": stats.version,
        "host": meta.get("host"),
        "pid": meta.get("pid"),
        "started": started.isoformat(),
        "uptime_s": round(time.time() - started.timestamp(), 1),
        "endpoints": [
            {
                "name": e.name,
                "subject": e.subject,
                "queue_group": e.queue_group,
                "requests": e.num_requests,
                "errors": e.num_errors,
                "last_error": e.last_error or None,
                "average_ms": round(e.average_processing_time / 1e6, 3),
            }
            for e in stats.endpoints
        ],
    }


async def status(args, settings) -> int:
    bus = await connect(settings)
    try:
        found = [_replica(s) for s in await replicas(bus, args.env, args.wait)]
    finally:
        await bus.drain(5)
    if args.json:
        emit_json({"env": args.env, "replicas": found})
        return 0 if found else 1
    if not found:
        print(f"no Switchboard service answered in env {args.env} within {args.wait:g}s")
        return 1
    rows = [
        {
            "service": r["service"],
            "id": r["id"],
            "version": r["version"],
            "host": f"{r['host']}:{r['pid']}",
            "up": f"{r['uptime_s']:.0f}s",
            "endpoint": e["name"],
            "requests": e["requests"],
            "errors": e["errors"],
            "avg ms": f"{e['average_ms']:.2f}",
            "last error": e["last_error"],
        }
        for r in found
        for e in r["endpoints"]
        or [{"name": "-", "requests": 0, "errors": 0, "average_ms": 0.0, "last_error": None}]
    ]
    print(
        table(
            rows,
            [
                "service",
                "id",
                "version",
                "host",
                "up",
                "endpoint",
                "requests",
                "errors",
                "avg ms",
                "last error",
            ],
        )
    )
    return 0

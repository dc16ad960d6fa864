"""From raw benchmark points to the summary: medians of repeats, latency added over the direct
call, CPU seconds per 1,000 invocations per process, peak RSS, the performance targets, and the
markdown tables printed at the end."""

from __future__ import annotations

import statistics
from collections import defaultdict

from services import catalog

SERVICES = tuple(reversed(catalog.NAMES))  # the gateway first
GATEWAY_PATHS = ("healthy", "ingress", "fallback", "stream", "ingress-stream")  # through Switchboard
INFRA = ("nats", "redis", "postgres")
PROCESSES = (*SERVICES, "simulator", "litellm", *INFRA, "loadgen")
RSS_LIMIT_MB = 200.0


def point_key(p: dict) -> tuple:
    return (p["path"], p["sim_ms"], p["concurrency"], p.get("log_level", "WARNING"))


def cpu_deltas(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds per process group between two samples (a pid new in `after` counts whole)."""
    out = {}
    for name, pids in after["cpu"].items():
        prev = before["cpu"].get(name, {})
        out[name] = round(sum(v - prev.get(pid, 0.0) for pid, v in pids.items()), 3)
    return out


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def summarize(points: list[dict]) -> list[dict]:
    """One row per (path, sim latency, concurrency, log level): the median of its repeats."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for p in points:
        groups[point_key(p)].append(p)
    rows = []
    for key, reps in groups.items():
        path, sim_ms, c, level = key
        row = {
            "path": path,
            "sim_ms": sim_ms,
            "concurrency": c,
            "log_level": level,
            "repeats": len(reps),
            "throughput": _median([r["throughput"] for r in reps]),
            "errors": sum(r["errors"] for r in reps),
            "total": sum(r["total"] for r in reps),
            "loadgen_cpu_pct": _median([r["loadgen_cpu_pct"] for r in reps]),
            "other_busy_pct": _median([r.get("other_busy_pct") for r in reps]),
            "drain_s": _median([r.get("drain_s", 0.0) for r in reps]),
        }
        for q in ("p50", "p90", "p99"):
            row[q] = _median([r["latency_ms"].get(q) for r in reps])
        for part in ("gateway_ms", "provider_ms", "first_chunk_ms"):
            row[part] = {q: _median([(r.get(part) or {}).get(q) for r in reps]) for q in ("p50", "p99")}
        if "offered_rate" in reps[0]:  # open loop
            row["offered_rate"] = reps[0]["offered_rate"]
            row["peak_in_flight"] = max(r["peak_in_flight"] for r in reps)
            row["send_lag_p99"] = _median([r["send_lag_ms"].get("p99") for r in reps])
            row["latency_growth_ms"] = _median([r["latency_growth_ms"] for r in reps])
        row["cpu_per_1k"] = {
            name: _median([r["cpu_per_1k"].get(name) for r in reps])
            for name in PROCESSES
            if any(name in r["cpu_per_1k"] for r in reps)
        }
        row["peak_rss_mb"] = {
            name: round(max(r["peak_rss_mb"].get(name, 0.0) for r in reps), 1)
            for name in {n for r in reps for n in r["peak_rss_mb"]}
        }
        rows.append(row)
    direct = {(r["sim_ms"], r["concurrency"]): r for r in rows if r["path"] == "direct"}
    for row in rows:
        base = direct.get((row["sim_ms"], row["concurrency"]))
        for q in ("p50", "p99"):
            ok = base is not None and row[q] is not None and base[q] is not None
            row[f"added_{q}"] = round(row[q] - base[q], 3) if ok and row["path"] != "direct" else None
    streamed = {(r["sim_ms"], r["concurrency"]): r for r in rows if r["path"] == "direct-stream"}
    for row in rows:
        base, first = streamed.get((row["sim_ms"], row["concurrency"])), row["first_chunk_ms"]["p50"]
        ok = base is not None and first is not None and row["path"] != "direct-stream"
        row["added_first_p50"] = round(first - base["first_chunk_ms"]["p50"], 3) if ok else None
    order = {
        "direct": 0,
        "healthy": 1,
        "ingress": 2,
        "fallback": 3,
        "direct-stream": 4,
        "stream": 5,
        "ingress-stream": 6,
        "litellm-healthy": 7,
        "litellm-fallback": 8,
    }
    rows.sort(
        key=lambda r: (
            r["sim_ms"],
            "offered_rate" in r,  # closed-loop rows first, then open-loop rows by rate
            order.get(r["path"], 9),
            r["log_level"] != "WARNING",
            r.get("offered_rate") or r["concurrency"],
        )
    )
    return rows


def open_loop_table(rows: list[dict], capacities: dict) -> str:
    """Open-loop rows: latency from each invocation's due time, added over the direct call at
    the same rate; `growth` = last quarter's p50 - first quarter's (large: a queue built up)."""
    header = ["path", "sim ms", "rate/s", "% of capacity", "thr/s", "p50 ms", "p99 ms", "+p50 ms"]
    header += ["+p99 ms", "peak in flight", "send lag p99 ms", "growth ms", "errors"]
    lines = []
    for r in rows:
        if "offered_rate" not in r:
            continue
        cap = capacities.get(r["sim_ms"])
        lines.append(
            [
                r["path"],
                _f(r["sim_ms"], 0),
                _f(r["offered_rate"], 0),
                _f(100 * r["offered_rate"] / cap, 0) if cap else "-",
                _f(r["throughput"], 0),
                _f(r["p50"], 2),
                _f(r["p99"], 2),
                _f(r["added_p50"], 2, True),
                _f(r["added_p99"], 2, True),
                str(r["peak_in_flight"]),
                _f(r["send_lag_p99"], 1),
                _f(r["latency_growth_ms"], 1, True),
                f"{r['errors']}/{r['total']}",
            ]
        )
    return _table(header, lines)


def _find(rows: list[dict], path: str, sim_ms: float, c: int, level: str = "WARNING") -> dict | None:
    for r in rows:
        if (r["path"], r["sim_ms"], r["concurrency"], r["log_level"]) == (path, sim_ms, c, level):
            return r
    return None


def targets(rows: list[dict], peak_rss: dict[str, float], capacities: dict[float, float]) -> list[dict]:
    """The performance targets as PASS/MISS lines (only those the run has the points for)."""
    out = []

    def add(name: str, ok: bool, detail: str) -> None:
        out.append({"target": name, "pass": ok, "detail": detail})

    c1 = _find(rows, "healthy", 0, 1)
    if c1 and c1["added_p50"] is not None:
        ok = c1["added_p50"] <= 2 and c1["added_p99"] <= 5
        add(
            "healthy, sim 0 ms, c=1: added p50 <= 2 ms and p99 <= 5 ms",
            ok,
            f"added p50 {c1['added_p50']:.2f} ms, p99 {c1['added_p99']:.2f} ms",
        )
    ingress = _find(rows, "ingress", 0, 1)
    if c1 and ingress and ingress["p50"] is not None and c1["p50"] is not None:
        over = ingress["p50"] - c1["p50"]
        add(
            "ingress, sim 0 ms, c=1: adds <= 1 ms p50 over the NATS path",
            over <= 1.0,
            f"ingress p50 {ingress['p50']:.2f} ms, NATS p50 {c1['p50']:.2f} ms: {over:+.2f} ms",
        )
    c16 = _find(rows, "healthy", 50, 16)
    if c16 and c16["added_p50"] is not None:
        add(
            "healthy, sim 50 ms, c=16: within 3 ms p50 of the direct call",
            c16["added_p50"] <= 3,
            f"added p50 {c16['added_p50']:.2f} ms",
        )
    c64 = _find(rows, "healthy", 0, 64)
    if c64:
        cpu = sum(c64["cpu_per_1k"].get(n) or 0.0 for n in (*SERVICES, *INFRA))
        add(
            "healthy, sim 0 ms, c=64: >= 1,000/s, <= 2 ms CPU per invocation (services and infrastructure)",
            c64["throughput"] >= 1000 and cpu <= 2.0,
            f"{c64['throughput']:.0f}/s, {cpu:.2f} ms CPU per invocation",
        )
    for r in rows:
        fb = r if r["path"] == "fallback" and "offered_rate" not in r else None
        hc = fb and _find(rows, "healthy", fb["sim_ms"], fb["concurrency"])
        if fb and hc and hc["throughput"]:
            ratio = fb["throughput"] / hc["throughput"]
            add(
                f"fallback, sim {fb['sim_ms']:g} ms, c={fb['concurrency']}: throughput >= 70% of healthy",
                ratio >= 0.7,
                f"{fb['throughput']:.0f}/s vs {hc['throughput']:.0f}/s = {ratio:.0%}",
            )
    cap = capacities.get(1000.0)
    at_half = ("healthy", 1000.0, round(cap * 0.5)) if cap else None
    half = [r for r in rows if (r["path"], r["sim_ms"], r.get("offered_rate")) == at_half]
    if half and half[0]["added_p99"] is not None:
        add(
            "healthy, sim 1000 ms, open loop at 50% of capacity: added p99 <= 10 ms",
            half[0]["added_p99"] <= 10,
            f"{half[0]['offered_rate']:g}/s of {cap:g}/s, added p99 {half[0]['added_p99']:.2f} ms",
        )
    measured = {k: v for k, v in peak_rss.items() if k in SERVICES}
    if measured:
        worst = max(measured, key=measured.get)
        add(
            f"no service above {RSS_LIMIT_MB:.0f} MB RSS",
            measured[worst] <= RSS_LIMIT_MB,
            f"largest: {worst} {measured[worst]:.0f} MB",
        )
    return out


# --- markdown ------------------------------------------------------------------------------


def _f(value, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _table(header: list[str], lines: list[list[str]], left: int = 3) -> str:
    """A markdown table; the first `left` columns are labels, the rest numbers."""
    align = "|" + "|".join(":---" if i < left else "---:" for i in range(len(header))) + "|"
    return "\n".join(["| " + " | ".join(header) + " |", align] + ["| " + " | ".join(x) + " |" for x in lines])


def _label(r: dict) -> str:
    return r["path"] if r["log_level"] == "WARNING" else f"{r['path']} (log {r['log_level']})"


def latency_table(rows: list[dict]) -> str:
    header = ["path", "sim ms", "c", "thr/s", "p50 ms", "p90 ms", "p99 ms", "+p50 ms", "+p99 ms"]
    header += ["errors", "loadgen CPU %", "other busy %"]
    lines = [
        [
            _label(r),
            _f(r["sim_ms"], 0),
            str(r["concurrency"]),
            _f(r["throughput"], 0),
            _f(r["p50"], 2),
            _f(r["p90"], 2),
            _f(r["p99"], 2),
            _f(r["added_p50"], 2, True),
            _f(r["added_p99"], 2, True),
            f"{r['errors']}/{r['total']}",
            _f(r["loadgen_cpu_pct"], 0),
            _f(r["other_busy_pct"], 0),
        ]
        for r in rows
    ]
    return _table(header, lines)


def streaming_table(rows: list[dict]) -> str:
    header = ["path", "sim ms", "c", "thr/s", "first p50 ms", "first p99 ms", "+first p50 ms", "p50 ms"]
    lines = [
        [
            _label(r),
            _f(r["sim_ms"], 0),
            str(r["concurrency"]),
            _f(r["throughput"], 0),
            _f(r["first_chunk_ms"]["p50"], 2),
            _f(r["first_chunk_ms"]["p99"], 2),
            _f(r["added_first_p50"], 2, True),
            _f(r["p50"], 2),
        ]
        for r in rows
        if r["first_chunk_ms"]["p50"] is not None
    ]
    return _table(header, lines)


def breakdown_table(rows: list[dict]) -> str:
    """Where an invocation's time goes, by the gateway's own account (median of p50s): the
    client's round trip, the gateway's handler, its provider call(s), and the direct call."""
    header = ["path", "sim ms", "c", "client p50", "gateway p50", "provider calls p50"]
    header += ["direct call p50", "NATS + queueing", "gateway w/o provider", "provider call overhead"]
    direct = {(r["sim_ms"], r["concurrency"]): r for r in rows if r["path"] == "direct"}
    lines = []
    for r in rows:
        if r["path"] not in ("healthy", "fallback") or not r["gateway_ms"].get("p50"):
            continue
        gw, prov = r["gateway_ms"]["p50"], r["provider_ms"]["p50"]
        base = direct.get((r["sim_ms"], r["concurrency"]))
        calls = 2 if r["path"] == "fallback" else 1
        overhead = prov - calls * base["p50"] if base and prov is not None else None
        line = [_label(r), _f(r["sim_ms"], 0), str(r["concurrency"]), _f(r["p50"], 2), _f(gw, 2)]
        line += [_f(prov, 2), _f(base["p50"] if base else None, 2), _f(r["p50"] - gw, 2)]
        line += [_f(gw - prov, 2), _f(overhead, 2)]
        lines.append(line)
    return _table(header, lines)


def cpu_table(rows: list[dict]) -> str:
    present = [n for n in PROCESSES if any(r["cpu_per_1k"].get(n) for r in rows)]
    header = ["path", "sim ms", "c", *present, "Switchboard total"]
    lines = []
    for r in rows:
        cpu = r["cpu_per_1k"]
        sb = sum(cpu.get(n) or 0.0 for n in SERVICES) if r["path"] in GATEWAY_PATHS else None
        lines.append(
            [_label(r), _f(r["sim_ms"], 0), str(r["concurrency"])]
            + [_f(cpu.get(n), 2) for n in present]
            + [_f(sb, 2)]
        )
    return _table(header, lines)


def rss_table(peak_rss: dict[str, float]) -> str:
    names = [n for n in PROCESSES if n in peak_rss]
    return _table(["process", "peak RSS MB (VmHWM)"], [[n, _f(peak_rss[n], 1)] for n in names], left=1)


def comparison_table(rows: list[dict]) -> str:
    """Switchboard and LiteLLM side by side, per path, simulator latency and concurrency."""
    header = ["path", "sim ms", "c", "SB thr/s", "SB p50", "SB p99", "SB +p50"]
    header += [
        "LiteLLM thr/s",
        "LiteLLM p50",
        "LiteLLM p99",
        "LiteLLM +p50",
        "SB CPU-s/1k",
        "SB + infra CPU-s/1k",
        "LiteLLM CPU-s/1k",
    ]
    lines = []
    for r in rows:
        if r["path"] not in ("healthy", "fallback") or r["log_level"] != "WARNING":
            continue
        other = _find(rows, f"litellm-{r['path']}", r["sim_ms"], r["concurrency"])
        sb_cpu = sum(r["cpu_per_1k"].get(n) or 0.0 for n in SERVICES)
        infra = sb_cpu + sum(r["cpu_per_1k"].get(n) or 0.0 for n in ("nats", "redis", "postgres"))
        line = [r["path"], _f(r["sim_ms"], 0), str(r["concurrency"])]
        line += [_f(r["throughput"], 0), _f(r["p50"], 2), _f(r["p99"], 2), _f(r["added_p50"], 2, True)]
        if other:
            line += [_f(other["throughput"], 0), _f(other["p50"], 2), _f(other["p99"], 2)]
            line += [
                _f(other["added_p50"], 2, True),
                _f(sb_cpu, 2),
                _f(infra, 2),
                _f(other["cpu_per_1k"].get("litellm"), 2),
            ]
        else:
            line += ["-"] * 4 + [_f(sb_cpu, 2), _f(infra, 2), "-"]
        lines.append(line)
    return _table(header, lines)


def targets_text(results: list[dict]) -> str:
    return "\n".join(f"{'PASS' if t['pass'] else 'MISS'}  {t['target']}  ({t['detail']})" for t in results)

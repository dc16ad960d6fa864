"""The benchmark's load generator: a separate asyncio process driven over stdin/stdout.

Each input line is a JSON command; each output line a JSON answer. `run` keeps `concurrency`
closed-loop workers busy for `duration` seconds against one target and answers with the count,
latency percentiles, a tally of outcomes and the generator's own CPU time, so the benchmark can
tell when the generator (and not the system under test) is the limit.

With `rate` instead, the run is an open loop: invocation i is due at start + i/rate whatever
the earlier ones are doing (any number in flight), and its latency counts from when it was
due, not from when it was sent, so a stall in the system or in the generator shows up in the
latencies instead of silently lowering the offered load (coordinated omission).

Targets: `http` (a keep-alive HTTP/1.1 connection per worker, requests written as prepared
bytes and responses read with httptools: a direct call to the simulator, a call through the
ingress or through LiteLLM) and `nats` (raw nats-py request/reply to the gateway; the InvokeRequest JSON
is built with orjson, a unique invocation id each, and the reply read with orjson: see
`codec_cost`, which measures what the SDK's pydantic path would cost instead). A target with
`stream: true` asks for a streamed answer (server-sent events over HTTP; chunks then the final
result on the worker's own inbox over NATS) and also times the first chunk.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
import uuid
from collections import Counter
from urllib.parse import SplitResult, urlsplit

import httptools
import nats
import orjson

PROMPT = "Classify: app crashes when uploading a 2 GB file."
MAX_TOKENS = 64
REQUEST_TIMEOUT_S = 30.0
OPEN_LOOP_SESSIONS = 64  # an open-loop run spreads its invocations over this many session ids


def percentiles(samples: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles of latency samples (ms)."""
    if not samples:
        return {}
    s = sorted(samples)
    n = len(s)

    def at(q: float) -> float:
        return round(s[min(n - 1, max(0, int(q * n + 0.5) - 1))], 3)

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": round(s[-1], 3),
        "mean": round(sum(s) / n, 3),
    }


def http_request(url: SplitResult, headers: dict[str, str], body: bytes) -> bytes:
    """An HTTP/1.1 POST as the bytes sent for every call of a target (its body never changes)."""
    lines = [f"POST {url.path} HTTP/1.1", f"Host: {url.netloc}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: the request written as prepared bytes, the response
    read by httptools (the C parser uvicorn uses). The HTTP counterpart of the raw nats-py
    request of the NATS paths, so that neither side pays for a client library's request and
    response objects (aiohttp's client costs about twice nats-py's CPU per call)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.body: list[bytes] = []
        self.first: float | None = None
        self.stream = False
        self.status, self.keep_alive = 0, True

    async def call(self, request: bytes, stream: bool) -> tuple[int, bytes, float | None]:
        """(status, body, when the first body bytes came); a new connection when the last one
        was closed or asked to close."""
        loop = asyncio.get_running_loop()
        if self.transport is None or self.transport.is_closing():
            await loop.create_connection(lambda: self, self.host, self.port)
        self.waiter, self.body, self.first, self.stream = loop.create_future(), [], None, stream
        self.transport.write(request)
        try:
            await asyncio.wait_for(self.waiter, REQUEST_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        if not self.keep_alive:
            self.close()
        return self.status, b"".join(self.body), self.first

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.parser = httptools.HttpResponseParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(exc or ConnectionResetError("the server closed the connection"))

    def on_headers_complete(self) -> None:
        self.status, self.keep_alive = self.parser.get_status_code(), self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.stream and self.first is None:
            self.first = time.perf_counter()
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)


class Generator:
    def __init__(self) -> None:
        self.connections: list[HttpConnection] = []
        self.nc = None
        self.ids = itertools.count()
        self.id_prefix = f"bench-{uuid.uuid4().hex[:8]}-"

    async def close(self) -> None:
        for conn in self.connections:
            conn.close()
        if self.nc is not None:
            await self.nc.close()

    async def _http_call(self, target: dict, first_chunk: list[float]):
        """A call on a keep-alive connection (`HttpConnection`) of the worker's own, or on a
        further one when the open loop sends it again before it has answered; with
        `stream`, the time to the first `data:` event too, and the outcome is the status and
        `/done` once the last event was `data: [DONE]` (or Anthropic's message_stop)."""
        url = urlsplit(target["url"])
        host, port = url.hostname, url.port or 80
        request = http_request(url, target["headers"], target["body"].encode())
        by_model, stream = target.get("by_model", False), target.get("stream", False)
        idle: list[HttpConnection] = []  # a closed-loop worker uses one; an open loop more at once
        clock = time.perf_counter

        async def call() -> str:
            if idle:
                conn = idle.pop()
            else:
                conn = HttpConnection(host, port)
                self.connections.append(conn)
            t0 = clock()
            status, body, first = await conn.call(request, stream)
            idle.append(conn)  # not after a failure: `HttpConnection.call` closed it and raised
            if not stream:
                if by_model and status == 200:
                    return f"200/{orjson.loads(body).get('model')}"
                return str(status)
            last = body.rstrip().rpartition(b"\n")[2]
            done = last.startswith(b"data:") and (b"[DONE]" in last or b'"message_stop"' in last)
            if first is not None and done:
                first_chunk.append((first - t0) * 1000)
            return f"{status}/done" if done else str(status)

        return call

    async def _nats_call(self, target: dict, worker: int, inside: dict[str, list[float]]):
        """`inside` collects what the gateway says of each expected reply: its own latency and
        the time its provider calls took."""
        if self.nc is None:
            self.nc = await nats.connect(target["nats_url"], name="switchboard-bench-loadgen")
        nc, subject, ids, prefix = self.nc, target["subject"], self.ids, self.id_prefix
        template = {
            "workflow": target["workflow"],
            "session_id": f"bench-w{worker}",
            "agent": "bench",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS,
        }

        gateway_ms, provider_ms, expect = inside["gateway"], inside["provider"], set(target["expect"])
        if target.get("stream"):
            template["stream"] = True
            ask = self._streamed(nc, subject, inside["first_chunk"])
        else:

            async def ask(data: bytes):
                return await nc.request(subject, data, timeout=REQUEST_TIMEOUT_S)

        async def call() -> str:
            template["invocation_id"] = f"{prefix}{next(ids)}"
            msg = await ask(orjson.dumps(template))
            reply = orjson.loads(msg.data)
            attempts = reply.get("attempts") or ()
            if attempts:
                outcome = f"{reply.get('status')}/{attempts[0].get('outcome')}"
            else:  # refused before any provider call: say why
                outcome = f"{reply.get('status')}/{(reply.get('error') or {}).get('code', '-')}"
            if outcome in expect:
                gateway_ms.append(reply.get("latency_ms") or 0.0)
                provider_ms.append(sum(a.get("latency_ms") or 0.0 for a in attempts))
            return outcome

        return call

    @staticmethod
    def _streamed(nc, subject: str, first_chunk: list[float]):
        """A streamed invocation on an inbox of the call's own: the time to the first message (a
        chunk, or the final result when nothing streamed), and the final result returned."""
        clock = time.perf_counter

        async def ask(data: bytes):
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            try:
                t0 = clock()
                await nc.publish(subject, data, reply=inbox)
                msg = await sub.next_msg(timeout=REQUEST_TIMEOUT_S)
                first = clock()
                while b'"status":' not in msg.data:  # chunks until the final result
                    msg = await sub.next_msg(timeout=REQUEST_TIMEOUT_S)
            finally:
                await sub.unsubscribe()
            first_chunk.append((first - t0) * 1000)
            return msg

        return ask

    async def run(self, cmd: dict) -> dict:
        target, duration, rate = cmd["target"], cmd["duration"], cmd.get("rate")
        concurrency = OPEN_LOOP_SESSIONS if rate else cmd["concurrency"]
        calls = []
        inside: dict[str, list[float]] = {"gateway": [], "provider": [], "first_chunk": []}
        for worker in range(concurrency):
            if target["kind"] == "http":
                calls.append(await self._http_call(target, inside["first_chunk"]))
            else:
                calls.append(await self._nats_call(target, worker, inside))
        latencies: list[float] = []
        tally: Counter[str] = Counter()
        expect = set(target["expect"])
        clock = time.perf_counter

        async def worker(call, deadline: float) -> None:
            while clock() < deadline:
                t0 = clock()
                try:
                    outcome = await call()
                except Exception as exc:  # every failure is counted, none stops the run
                    outcome = f"exception:{type(exc).__name__}"
                if outcome in expect:
                    latencies.append((clock() - t0) * 1000)
                tally[outcome] += 1

        by_send: dict[int, float] = {}  # open loop: latency by position in the timetable

        async def timed(call, i: int, due: float) -> None:
            try:
                outcome = await call()
            except Exception as exc:
                outcome = f"exception:{type(exc).__name__}"
            if outcome in expect:
                by_send[i] = ms = (clock() - due) * 1000
                latencies.append(ms)
            tally[outcome] += 1

        async def open_loop(t_start: float) -> dict:
            """Send on the timetable; when the generator falls behind it sends at once (the lag
            is reported and counted in the latencies), it never skips a slot."""
            in_flight: set[asyncio.Task] = set()
            peak, lag_ms, n = 0, [], int(duration * rate)
            for i in range(n):
                due = t_start + i / rate
                wait = due - clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                lag_ms.append((clock() - due) * 1000)
                task = asyncio.create_task(timed(calls[i % len(calls)], i, due))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                peak = max(peak, len(in_flight))
            if in_flight:
                await asyncio.wait(in_flight, timeout=REQUEST_TIMEOUT_S)
            if in_flight:  # still unanswered: counted as failures
                tally["unfinished"] += len(in_flight)
                for task in list(in_flight):
                    task.cancel()
            quarter = max(1, n // 4)
            first = [by_send[i] for i in range(quarter) if i in by_send]
            last = [by_send[i] for i in range(n - quarter, n) if i in by_send]
            growth = percentiles(last).get("p50", 0.0) - percentiles(first).get("p50", 0.0)
            return {
                "offered_rate": rate,
                "peak_in_flight": peak,
                "send_lag_ms": percentiles(lag_ms),
                # > 0 and large: latency grew through the run, i.e. a queue built up (over capacity)
                "latency_growth_ms": round(growth, 3),
            }

        cpu0, t0 = time.process_time(), clock()
        deadline = t0 + duration
        if rate:
            extra = await open_loop(t0)
        else:
            extra = {}
            await asyncio.gather(*(worker(call, deadline) for call in calls))
        elapsed = clock() - t0
        cpu = time.process_time() - cpu0
        ok = len(latencies)
        total = sum(tally.values())
        return {
            "ok": ok,
            "total": total,
            "errors": total - ok,
            "elapsed_s": round(elapsed, 4),
            # open loop: completions per second of the timetable (the offered rate when all succeed)
            "throughput": round(ok / (duration if rate else elapsed), 2) if elapsed else 0.0,
            "latency_ms": percentiles(latencies),
            "gateway_ms": percentiles(inside["gateway"]),
            "provider_ms": percentiles(inside["provider"]),
            "first_chunk_ms": percentiles(inside["first_chunk"]),
            "tally": dict(tally),
            "loadgen_cpu_s": round(cpu, 3),
            "loadgen_cpu_pct": round(100 * cpu / elapsed, 1) if elapsed else 0.0,
            **extra,
        }


def codec_cost(rounds: int = 3000) -> dict[str, float]:
    """Microseconds per request to build an InvokeRequest and read an InvokeResult: orjson dicts
    (what this generator does) against the SDK's pydantic models and codec."""
    from shared import codec
    from shared.contracts import InvokeRequest, InvokeResult, Message

    reply = orjson.dumps(
        {
            "invocation_id": "x",
            "status": "success",
            "workflow": "support-triage",
            "provider": "openai-sim",
            "model": "gpt-sim-large",
            "output": "[openai-sim/gpt-sim-large] " + "word " * 30,
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 17, "completion_tokens": 30},
            "latency_ms": 1.2,
            "attempts": [
                {"tier": 0, "provider": "openai-sim", "model": "gpt-sim-large", "outcome": "ok"},
            ],
            "trace_id": "0" * 32,
            "config_version": "1",
        }
    )
    template = {
        "workflow": "support-triage",
        "session_id": "s",
        "agent": "bench",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
    }

    def with_orjson(i: int) -> None:
        template["invocation_id"] = f"bench-{i}"
        orjson.dumps(template)
        reply_doc = orjson.loads(reply)
        reply_doc.get("status")

    def with_sdk(i: int) -> None:
        request = InvokeRequest(
            invocation_id=uuid.uuid4().hex,
            workflow="support-triage",
            session_id="s",
            agent="bench",
            messages=[Message(role="user", content=PROMPT)],
            max_tokens=MAX_TOKENS,
            metadata={},
        )
        codec.encode(request)
        codec.decode(reply, InvokeResult)

    out = {}
    for name, fn in (("orjson_us", with_orjson), ("sdk_pydantic_us", with_sdk)):
        for i in range(200):
            fn(i)
        t0 = time.perf_counter()
        for i in range(rounds):
            fn(i)
        out[name] = round((time.perf_counter() - t0) / rounds * 1e6, 2)
    return out


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    gen = Generator()

    def answer(doc: dict) -> None:
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        sys.stdout.flush()

    answer({"ready": True, "pid": os.getpid(), "codec_cost": codec_cost()})
    try:
        while line := await reader.readline():
            cmd = orjson.loads(line)
            if cmd["op"] == "quit":
                break
            answer(await gen.run(cmd))
    finally:
        await gen.close()


def main() -> None:
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()

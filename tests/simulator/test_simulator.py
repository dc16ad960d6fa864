"""Provider simulator: wire shapes, determinism, fault injection, control API, process life."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.simulator.app import STATE, SimState, start
from services.simulator.faults import OVERSIZE_BYTES
from shared.simctl import SimulatorControl
from tests.support.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
OA_AUTH = {"Authorization": "Bearer sk-test"}
AN_AUTH = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}


@dataclass
class Sim:
    base: str
    state: SimState
    http: httpx.AsyncClient
    ctl: SimulatorControl

    async def openai(self, provider: str | None = "openai-sim", **body) -> httpx.Response:
        body.setdefault("model", "gpt-4o-mini")
        body.setdefault("messages", [{"role": "user", "content": "hello there"}])
        prefix = f"/p/{provider}" if provider else ""
        return await self.http.post(f"{prefix}/v1/chat/completions", json=body, headers=OA_AUTH)

    async def anthropic(self, provider: str | None = "anthropic-sim", **body) -> httpx.Response:
        body.setdefault("model", "claude-3-5-haiku")
        body.setdefault("max_tokens", 256)
        body.setdefault("messages", [{"role": "user", "content": "hello there"}])
        prefix = f"/p/{provider}" if provider else ""
        return await self.http.post(f"{prefix}/v1/messages", json=body, headers=AN_AUTH)


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    runner, port = await start("127.0.0.1", 0, 0)
    base = f"http://127.0.0.1:{port}"
    try:
        async with (
            httpx.AsyncClient(base_url=base, timeout=10.0) as http,
            SimulatorControl(base) as ctl,
        ):
            yield Sim(base, runner.app[STATE], http, ctl)
    finally:
        await runner.cleanup()


async def wait_until(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before deadline")
        await asyncio.sleep(0.01)


def expected_prompt_tokens(*texts: str) -> int:
    return sum(math.ceil(len(t) / 4) + 4 for t in texts)


def generated_words(text: str, provider: str, model: str) -> list[str]:
    prefix = f"[{provider}/{model}] "
    assert text.startswith(prefix), text
    return text[len(prefix) :].split()


# --- wire shapes ---------------------------------------------------------------------------


async def test_openai_shape_and_usage(sim: Sim) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    r = await sim.openai(messages=messages, temperature=0.2)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    data = r.json()
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    assert isinstance(data["created"], int)
    assert data["model"] == "gpt-4o-mini"
    [choice] = data["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    words = generated_words(choice["message"]["content"], "openai-sim", "gpt-4o-mini")
    assert 8 <= len(words) <= 48
    usage = data["usage"]
    assert usage["prompt_tokens"] == expected_prompt_tokens(
        "You are terse.", "What is the capital of France?"
    )
    assert usage["completion_tokens"] == len(words)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_anthropic_shape_and_usage_with_system_and_parts(sim: Sim) -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "first"}]},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}],
        },
    ]
    r = await sim.anthropic(system="Be brief.", messages=messages)
    assert r.status_code == 200
    data = r.json()
    assert data["type"] == "message"
    assert data["role"] == "assistant"
    assert data["id"].startswith("msg_")
    assert data["model"] == "claude-3-5-haiku"
    assert data["stop_reason"] == "end_turn"
    [block] = data["content"]
    assert block["type"] == "text"
    words = generated_words(block["text"], "anthropic-sim", "claude-3-5-haiku")
    assert 8 <= len(words) <= 48
    assert data["usage"] == {
        "input_tokens": expected_prompt_tokens("first", "ok", "part one\ntwo", "Be brief."),
        "output_tokens": len(words),
    }


async def test_unprefixed_routes_use_default_provider(sim: Sim) -> None:
    oa = (await sim.openai(provider=None)).json()
    an = (await sim.anthropic(provider=None)).json()
    assert oa["choices"][0]["message"]["content"].startswith("[default/gpt-4o-mini] ")
    assert an["content"][0]["text"].startswith("[default/claude-3-5-haiku] ")
    stats = await sim.ctl.stats()
    assert stats["by_provider"] == {"default": {"gpt-4o-mini": 1, "claude-3-5-haiku": 1}}


async def test_healthz(sim: Sim) -> None:
    r = await sim.http.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


# --- determinism and length ----------------------------------------------------------------


def _oa_text(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


async def test_output_is_deterministic(sim: Sim) -> None:
    msgs = [{"role": "user", "content": "Summarise the report"}]
    a = _oa_text(await sim.openai(messages=msgs))
    b = _oa_text(await sim.openai(messages=msgs, temperature=1.5))
    # Only the last user message matters, not history or sampling params.
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "x"}]
    c = _oa_text(await sim.openai(messages=[*history, *msgs]))
    assert a == b
    assert generated_words(a, "openai-sim", "gpt-4o-mini") == generated_words(c, "openai-sim", "gpt-4o-mini")

    other_model = _oa_text(await sim.openai(model="gpt-4o", messages=msgs))
    assert other_model.startswith("[openai-sim/gpt-4o] ")
    assert generated_words(other_model, "openai-sim", "gpt-4o") != generated_words(
        a, "openai-sim", "gpt-4o-mini"
    )
    other_prompt = _oa_text(await sim.openai(messages=[{"role": "user", "content": "Other"}]))
    assert other_prompt != a

    # Same (provider, model, prompt) gives the same text over the Anthropic API too.
    an = (await sim.anthropic(provider="openai-sim", model="gpt-4o-mini", messages=msgs)).json()
    assert an["content"][0]["text"] == a


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_openai_max_tokens_truncates_with_length(sim: Sim, field: str) -> None:
    r = await sim.openai(**{field: 3})
    data = r.json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 3
    words = generated_words(data["choices"][0]["message"]["content"], "openai-sim", "gpt-4o-mini")
    full = generated_words(_oa_text(await sim.openai()), "openai-sim", "gpt-4o-mini")
    assert words == full[:3]


async def test_anthropic_max_tokens_truncates(sim: Sim) -> None:
    data = (await sim.anthropic(max_tokens=2)).json()
    assert data["stop_reason"] == "max_tokens"
    assert data["usage"]["output_tokens"] == 2
    words = generated_words(data["content"][0]["text"], "anthropic-sim", "claude-3-5-haiku")
    assert len(words) == 2


async def test_large_max_tokens_is_not_length(sim: Sim) -> None:
    data = (await sim.openai(max_tokens=48)).json()
    # 48 is the longest natural reply, so finish is "length" only if it hit exactly 48.
    n = data["usage"]["completion_tokens"]
    assert data["choices"][0]["finish_reason"] == ("length" if n == 48 else "stop")
    data = (await sim.openai(max_tokens=49)).json()
    assert data["choices"][0]["finish_reason"] == "stop"


# --- request errors ------------------------------------------------------------------------


def assert_openai_error(r: httpx.Response, status: int, etype: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == etype
    assert isinstance(err["message"], str) and err["message"]
    assert "code" in err
    return err


def assert_anthropic_error(r: httpx.Response, status: int, etype: str) -> dict:
    assert r.status_code == status, r.text
    data = r.json()
    assert data["type"] == "error"
    assert data["error"]["type"] == etype
    assert isinstance(data["error"]["message"], str) and data["error"]["message"]
    return data["error"]


async def test_missing_auth_is_401(sim: Sim) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    r = await sim.http.post("/p/a/v1/chat/completions", json=body)
    assert assert_openai_error(r, 401, "invalid_request_error")["code"] == "invalid_api_key"
    r = await sim.http.post("/p/a/v1/chat/completions", json=body, headers={"Authorization": "Basic c2s6"})
    assert_openai_error(r, 401, "invalid_request_error")
    r = await sim.http.post("/p/a/v1/messages", json=body, headers=OA_AUTH)
    assert_anthropic_error(r, 401, "authentication_error")


async def test_bad_requests_are_400_in_api_shape(sim: Sim) -> None:
    bad_json = b'{"model": "m", "messages": ['
    r = await sim.http.post("/v1/chat/completions", content=bad_json, headers=OA_AUTH)
    assert_openai_error(r, 400, "invalid_request_error")
    r = await sim.http.post("/v1/messages", content=bad_json, headers=AN_AUTH)
    assert_anthropic_error(r, 400, "invalid_request_error")

    r = await sim.http.post("/v1/chat/completions", json={"model": "m"}, headers=OA_AUTH)
    assert "messages" in assert_openai_error(r, 400, "invalid_request_error")["message"]
    r = await sim.http.post("/v1/messages", json={"model": "m", "max_tokens": 5}, headers=AN_AUTH)
    assert "messages" in assert_anthropic_error(r, 400, "invalid_request_error")["message"]

    r = await sim.anthropic(max_tokens=None)
    assert "max_tokens" in assert_anthropic_error(r, 400, "invalid_request_error")["message"]
    r = await sim.openai(max_tokens=0)
    assert_openai_error(r, 400, "invalid_request_error")


# --- faults --------------------------------------------------------------------------------


async def test_429_has_retry_after_and_count_expires(sim: Sim) -> None:
    await sim.ctl.add_fault("429", count=2)
    for _ in range(2):
        r = await sim.openai()
        assert_openai_error(r, 429, "requests")
        assert r.headers["Retry-After"] == "1"
    assert (await sim.openai()).status_code == 200

    await sim.ctl.add_fault("429", count=1, retry_after_s=7)
    r = await sim.anthropic()
    assert_anthropic_error(r, 429, "rate_limit_error")
    assert r.headers["Retry-After"] == "7"
    assert (await sim.anthropic()).status_code == 200


@pytest.mark.parametrize(
    ("kind", "status", "oa_type", "an_type"),
    [
        ("500", 500, "server_error", "api_error"),
        ("503", 503, "server_error", "overloaded_error"),
        ("400", 400, "invalid_request_error", "invalid_request_error"),
    ],
)
async def test_error_faults(sim: Sim, kind: str, status: int, oa_type: str, an_type: str) -> None:
    await sim.ctl.add_fault(kind)
    assert_openai_error(await sim.openai(), status, oa_type)
    assert_anthropic_error(await sim.anthropic(), status, an_type)
    # count=None: stays until removed.
    assert (await sim.openai()).status_code == status
    await sim.ctl.clear_faults()
    assert (await sim.openai()).status_code == 200


async def test_hang_is_cut_by_client_timeout_and_cancelled(sim: Sim) -> None:
    await sim.ctl.add_fault("hang", provider="openai-sim", count=1)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await sim.http.post(
            "/p/openai-sim/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
            headers=OA_AUTH,
            timeout=httpx.Timeout(10.0, read=0.3),
        )
    assert time.monotonic() - started < 5
    # The disconnect cancels the parked handler instead of leaving it for 300 s.
    await wait_until(lambda: sim.state.hanging == 0)
    assert (await sim.openai()).status_code == 200


async def test_hang_is_released_on_shutdown() -> None:
    runner, port = await start("127.0.0.1", 0, 0)
    state = runner.app[STATE]
    state.faults.add("hang")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        pending = asyncio.create_task(
            http.post(
                "/v1/messages",
                json={
                    "model": "m",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "x"}],
                },
                headers=AN_AUTH,
            )
        )
        await wait_until(lambda: state.hanging == 1)
        started = time.monotonic()
        await asyncio.wait_for(runner.cleanup(), 10)
        assert time.monotonic() - started < 4  # well under the 5 s shutdown timeout
        try:
            r = await asyncio.wait_for(pending, 10)
        except httpx.TransportError:
            pass  # connection closed by shutdown is also acceptable
        else:
            assert r.status_code == 504
    assert state.hanging == 0


async def test_malformed_is_not_json(sim: Sim) -> None:
    await sim.ctl.add_fault("malformed", count=2)
    for r in (await sim.openai(), await sim.anthropic()):
        assert r.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.content)
    assert (await sim.openai()).json()["object"] == "chat.completion"


async def test_latency_fault_and_base_latency(sim: Sim) -> None:
    await sim.ctl.add_fault("latency", latency_ms=250, count=1)
    started = time.monotonic()
    r = await sim.openai()
    assert r.status_code == 200
    assert time.monotonic() - started >= 0.25

    await sim.ctl.set_latency(200, provider="anthropic-sim")
    started = time.monotonic()
    assert (await sim.anthropic()).status_code == 200
    assert time.monotonic() - started >= 0.2
    assert sim.state.latency_for("anthropic-sim") == 200
    assert sim.state.latency_for("openai-sim") == 0

    await sim.ctl.set_latency(150)
    assert sim.state.latency_for("openai-sim") == 150
    await sim.ctl.set_latency(None, provider="anthropic-sim")
    assert sim.state.latency_for("anthropic-sim") == 150
    await sim.ctl.reset()
    assert sim.state.latency_for("openai-sim") == 0


async def test_provider_and_model_scoped_faults(sim: Sim) -> None:
    await sim.ctl.add_fault("503", provider="openai-sim")
    assert (await sim.openai(provider="openai-sim")).status_code == 503
    assert (await sim.openai(provider="openai-backup")).status_code == 200
    assert (await sim.openai(provider=None)).status_code == 200
    assert (await sim.anthropic(provider="anthropic-sim")).status_code == 200

    await sim.ctl.add_fault("429", provider="anthropic-sim", model="claude-big")
    assert (await sim.anthropic(model="claude-big")).status_code == 429
    assert (await sim.anthropic(model="claude-small")).status_code == 200


async def test_newest_rule_wins_and_single_delete(sim: Sim) -> None:
    older = await sim.ctl.add_fault("500")
    newer = await sim.ctl.add_fault("503")
    assert older != newer
    assert (await sim.openai()).status_code == 503
    await sim.ctl.remove_fault(newer)
    assert (await sim.openai()).status_code == 500
    with pytest.raises(httpx.HTTPStatusError):
        await sim.ctl.remove_fault(newer)
    await sim.ctl.remove_fault(older)
    assert (await sim.openai()).status_code == 200


async def test_invalid_fault_spec_is_rejected(sim: Sim) -> None:
    for body in (
        {"kind": "418"},
        {"kind": "429", "count": 0},
        {"kind": "latency"},
        {"kind": "500", "provider": 3},
    ):
        r = await sim.http.post("/_sim/faults", json=body)
        assert r.status_code == 400, body
    assert len(sim.state.faults) == 0


async def test_faults_do_not_consume_on_invalid_requests(sim: Sim) -> None:
    await sim.ctl.add_fault("500", count=1)
    assert (await sim.anthropic(max_tokens=None)).status_code == 400
    assert (await sim.anthropic()).status_code == 500
    assert (await sim.anthropic()).status_code == 200


# --- stats ---------------------------------------------------------------------------------


async def test_stats_count_every_completion_request(sim: Sim) -> None:
    await sim.openai()
    await sim.openai()
    await sim.openai(model="gpt-4o")
    await sim.ctl.add_fault("500", provider="anthropic-sim", count=1)
    assert (await sim.anthropic()).status_code == 500
    await sim.anthropic()
    await sim.http.post("/p/openai-sim/v1/chat/completions", json={"model": "gpt-4o"})  # 401
    await sim.http.get("/healthz")  # not a completion route
    assert await sim.ctl.stats() == {
        "total": 6,
        "by_provider": {
            "openai-sim": {"gpt-4o-mini": 2, "gpt-4o": 2},
            "anthropic-sim": {"claude-3-5-haiku": 2},
        },
    }
    await sim.ctl.add_fault("429")
    await sim.ctl.reset()
    assert await sim.ctl.stats() == {"total": 0, "by_provider": {}}
    assert (await sim.openai()).status_code == 200  # reset cleared the rule


async def test_concurrent_requests(sim: Sim) -> None:
    results = await asyncio.gather(*(sim.openai(model=f"m{i % 4}") for i in range(64)))
    assert all(r.status_code == 200 for r in results)
    stats = await sim.ctl.stats()
    assert stats["total"] == 64
    assert stats["by_provider"]["openai-sim"] == {f"m{i}": 16 for i in range(4)}


# --- real process --------------------------------------------------------------------------


async def test_subprocess_serves_and_exits_cleanly_on_sigterm() -> None:
    port = free_port()
    env = {**os.environ, "SB_SIM_PORT": str(port), "SB_SIM_LATENCY_MS": "5"}
    env.pop("SB_SIM_HOST", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.simulator",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=2.0) as http:
            deadline = time.monotonic() + 20
            while True:
                if proc.returncode is not None:
                    out, err = await proc.communicate()
                    pytest.fail(f"simulator exited early: {out.decode()} {err.decode()}")
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "simulator did not become ready"
                await asyncio.sleep(0.05)

            r = await http.post(
                "/p/anthropic-sim/v1/messages",
                json={
                    "model": "c",
                    "max_tokens": 4,
                    "messages": [{"role": "user", "content": "x"}],
                },
                headers=AN_AUTH,
            )
            assert r.status_code == 200
            assert r.json()["content"][0]["text"].startswith("[anthropic-sim/c] ")

        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err.decode()
        first = json.loads(out.decode().splitlines()[0])
        assert first["event"] == "simulator.started"
        assert first["host"] == "127.0.0.1"
        assert first["port"] == port
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- streaming -----------------------------------------------------------------------------


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of each server-sent event in a body."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields.get("event"), fields["data"]))
    return out


async def test_openai_stream_matches_the_plain_answer_with_usage_last(sim: Sim) -> None:
    plain = (await sim.openai()).json()
    r = await sim.openai(stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [data for _, data in sse_events(r.content)]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(d) for d in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert "".join(content) == plain["choices"][0]["message"]["content"]
    assert len(content) == plain["usage"]["completion_tokens"]  # one chunk per token
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == plain["usage"]

    bare = [data for _, data in sse_events((await sim.openai(stream=True, max_tokens=2)).content)]
    assert "usage" not in json.loads(bare[0])
    assert json.loads(bare[-2])["choices"][0]["finish_reason"] == "length"
    assert len(bare) == 1 + 2 + 1 + 1  # role, two words, finish, [DONE]


async def test_anthropic_stream_events_in_order_with_usage(sim: Sim) -> None:
    plain = (await sim.anthropic()).json()
    r = await sim.anthropic(stream=True)
    assert r.status_code == 200
    events = sse_events(r.content)
    names = [name for name, _ in events]
    n = plain["usage"]["output_tokens"]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * n,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    bodies = [json.loads(data) for _, data in events]
    assert all(b["type"] == name for name, b in zip(names, bodies, strict=True))
    assert bodies[0]["message"]["usage"]["input_tokens"] == plain["usage"]["input_tokens"]
    text = "".join(b["delta"]["text"] for b in bodies if b["type"] == "content_block_delta")
    assert text == plain["content"][0]["text"]
    assert bodies[-2]["delta"]["stop_reason"] == "end_turn"
    assert bodies[-2]["usage"] == {"output_tokens": n}


async def test_break_fault_drops_a_stream_after_n_chunks(sim: Sim) -> None:
    await sim.ctl.add_fault("break", provider="openai-sim", after_chunks=5, count=1)
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):
        async with sim.http.stream(
            "POST",
            "/p/openai-sim/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
            headers=OA_AUTH,
        ) as r:
            assert r.status_code == 200
            async for part in r.aiter_bytes():
                received += part
    events = [data for _, data in sse_events(received)]
    assert len(events) == 1 + 5  # the role chunk, then five content chunks; no end, no [DONE]
    assert all(json.loads(d)["choices"][0]["finish_reason"] is None for d in events)

    await sim.ctl.add_fault("break", provider="anthropic-sim", after_chunks=0, count=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await sim.anthropic()  # not streamed: half a body, then the connection dropped
    assert (await sim.anthropic(stream=True)).status_code == 200  # the rule was used up


async def test_overrun_fault_ignores_max_tokens(sim: Sim) -> None:
    full = (await sim.openai()).json()["usage"]["completion_tokens"]
    await sim.ctl.add_fault("overrun", count=1)
    data = (await sim.openai(max_tokens=2)).json()
    assert data["usage"]["completion_tokens"] == full > 2
    assert data["choices"][0]["finish_reason"] == "stop"


async def test_oversize_fault_makes_one_word_and_one_stream_chunk_oversize(sim: Sim) -> None:
    whole = (await sim.openai()).json()
    await sim.ctl.add_fault("oversize", after_chunks=2, count=1)
    r = await sim.openai(stream=True)
    deltas = [
        json.loads(d)["choices"][0]["delta"].get("content") for _, d in sse_events(r.content) if d != "[DONE]"
    ]
    pieces = [d for d in deltas if d]
    assert [len(p) > 1000 for p in pieces].count(True) == 1
    assert pieces[2] == " " + pieces[2].strip() and len(pieces[2].strip()) == OVERSIZE_BYTES
    assert len(pieces) == whole["usage"]["completion_tokens"]  # still one word, one token
    again = (await sim.openai()).json()  # the rule was used up
    assert again["choices"] == whole["choices"]


async def test_drip_fault_sends_a_chunk_per_interval_until_removed_then_the_rest(sim: Sim) -> None:
    whole = (await sim.openai()).json()["choices"][0]["message"]["content"]
    drip = await sim.ctl.add_fault("drip", latency_ms=20)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}], "stream": True}
    received, held = b"", True
    url = "/p/openai-sim/v1/chat/completions"
    async with sim.http.stream("POST", url, json=body, headers=OA_AUTH) as r:
        async for part in r.aiter_bytes():
            received += part
            if held and received.count(b'"content"') >= 4:  # the role chunk and three words, dripped
                assert b"[DONE]" not in received
                await sim.ctl.remove_fault(drip)
                held = False
    events = [data for _, data in sse_events(received)]
    deltas = [json.loads(d)["choices"][0]["delta"].get("content") for d in events[:-1]]
    assert "".join(d for d in deltas if d) == whole
    assert events[-1] == "[DONE]"


async def test_invalid_stream_requests_are_400(sim: Sim) -> None:
    assert_openai_error(await sim.openai(stream="yes"), 400, "invalid_request_error")
    assert_openai_error(
        await sim.openai(stream_options={"include_usage": True}), 400, "invalid_request_error"
    )
    r = await sim.http.post("/_sim/faults", json={"kind": "break", "after_chunks": -1})
    assert r.status_code == 400

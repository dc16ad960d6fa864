"""Provider adapters (shared/providers) over real HTTP against the provider simulator: the
OpenAI and Anthropic request mapping (messages, system prompt, parameters), usage and finish
reasons read back, API keys sent in headers and never repeated in an error, every failure
classified into the attempt outcome that decides whether the next tier is tried, and
Retry-After parsing."""

from __future__ import annotations

import asyncio
import contextlib
import gzip

import httpx
import orjson
import pytest
from aiohttp import web

from services.simulator.completions import prompt_tokens
from shared.contracts import AttemptOutcome, Message
from shared.policy import Policy, load_dir_or_raise
from shared.providers import ProviderCallError, ProviderPool
from shared.providers.anthropic import AnthropicAdapter
from shared.providers.base import CallParams, _retry_after
from shared.providers.openai import OpenAIAdapter
from tests.support.fallback import closed_port, fixed_provider, provider_server
from tests.support.stack import REPO

OPENAI_KEY = "sk-openai-TESTSECRET-5f1c2e9a"
ANTHROPIC_KEY = "sk-ant-TESTSECRET-77b0d4e1"
MODEL = {"openai-sim": "gpt-sim-large", "anthropic-sim": "claude-sim-sonnet"}
CONVERSATION = [
    Message(role="system", content="You are terse."),
    Message(role="system", content="Answer in English."),
    Message(role="user", content="What is the capital of France?"),
    Message(role="assistant", content="Paris."),
    Message(role="tool", content='{"weather": "sunny"}'),
    Message(role="user", content="And of Italy?"),
]


def policy_doc(simulator) -> dict:
    """The example policy, pointed at this test's simulator (SB_SIMULATOR_URL is set)."""
    return load_dir_or_raise(REPO / "config").model_dump(mode="json")


@contextlib.asynccontextmanager
async def adapters(doc: dict):
    pool = ProviderPool()
    pool.update(Policy.model_validate(doc))
    try:
        yield pool
    finally:
        await pool.aclose()


@pytest.fixture
async def pool(simulator, monkeypatch):
    monkeypatch.setenv("SB_OPENAI_SIM_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("SB_ANTHROPIC_SIM_API_KEY", ANTHROPIC_KEY)
    async with adapters(policy_doc(simulator)) as p:
        yield p


async def call(adapter, messages=CONVERSATION, params=None, timeout_s=5.0):
    return await adapter.complete(
        MODEL[adapter.name], messages, params or CallParams(max_tokens=200), timeout_s
    )


# --- request mapping -----------------------------------------------------------------------


def test_openai_body_keeps_roles_and_maps_parameters(pool):
    adapter = pool.get("openai-sim")
    assert isinstance(adapter, OpenAIAdapter)

    body = adapter.body(
        "gpt-sim-large", CONVERSATION, CallParams(max_tokens=50, temperature=1.5, top_p=0.9, stop=["\n\n"])
    )

    assert body == {
        "model": "gpt-sim-large",
        "messages": [{"role": m.role, "content": m.content} for m in CONVERSATION],
        "max_tokens": 50,
        "temperature": 1.5,
        "top_p": 0.9,
        "stop": ["\n\n"],
    }
    assert adapter.body("gpt-sim-large", CONVERSATION[2:3], CallParams(max_tokens=5)) == {
        "model": "gpt-sim-large",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 5,
    }


def test_anthropic_body_moves_system_out_and_maps_parameters(pool):
    adapter = pool.get("anthropic-sim")
    assert isinstance(adapter, AnthropicAdapter)

    body = adapter.body(
        "claude-sim-sonnet", CONVERSATION, CallParams(max_tokens=50, temperature=1.5, top_p=0.9, stop=["END"])
    )

    assert body == {
        "model": "claude-sim-sonnet",
        "system": "You are terse.\n\nAnswer in English.",
        "messages": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": '{"weather": "sunny"}'},
            {"role": "user", "content": "And of Italy?"},
        ],
        "max_tokens": 50,
        "temperature": 1.0,  # Anthropic's range is 0..1
        "top_p": 0.9,
        "stop_sequences": ["END"],
    }
    plain = adapter.body("claude-sim-sonnet", CONVERSATION[2:3], CallParams(max_tokens=5))
    assert "system" not in plain and "temperature" not in plain and "stop_sequences" not in plain


def test_api_keys_travel_in_the_providers_own_headers(pool):
    assert pool.get("openai-sim").headers["authorization"] == f"Bearer {OPENAI_KEY}"
    anthropic = pool.get("anthropic-sim").headers
    assert anthropic["x-api-key"] == ANTHROPIC_KEY
    assert anthropic["anthropic-version"] == "2023-06-01"
    assert "authorization" not in anthropic


# --- answers read back, over HTTP ----------------------------------------------------------


async def test_openai_completion_and_usage_from_the_simulator(pool, simulator):
    adapter = pool.get("openai-sim")

    completion = await call(adapter)

    assert completion.output.startswith("[openai-sim/gpt-sim-large] ")
    sent = adapter.body("gpt-sim-large", CONVERSATION, CallParams(max_tokens=200))["messages"]
    assert completion.prompt_tokens == prompt_tokens(sent)
    assert completion.completion_tokens == len(completion.output.split()) - 1
    assert completion.finish_reason == "stop"
    stats = await simulator.control.stats()
    assert stats["by_provider"] == {"openai-sim": {"gpt-sim-large": 1}}


async def test_anthropic_completion_and_usage_count_the_system_prompt(pool, simulator):
    adapter = pool.get("anthropic-sim")

    completion = await call(adapter)

    assert completion.output.startswith("[anthropic-sim/claude-sim-sonnet] ")
    body = adapter.body("claude-sim-sonnet", CONVERSATION, CallParams(max_tokens=200))
    assert completion.prompt_tokens == prompt_tokens(body["messages"], body["system"])
    assert completion.prompt_tokens > prompt_tokens(body["messages"])
    assert completion.completion_tokens == len(completion.output.split()) - 1
    assert completion.finish_reason == "stop"  # end_turn


@pytest.mark.parametrize("name", ["openai-sim", "anthropic-sim"])
async def test_max_tokens_truncates_and_finishes_with_length(pool, name):
    completion = await call(pool.get(name), params=CallParams(max_tokens=2))

    assert completion.completion_tokens == 2
    assert completion.finish_reason == "length"


@pytest.mark.parametrize("name", ["openai-sim", "anthropic-sim"])
async def test_the_reply_follows_the_last_user_message(pool, name):
    adapter = pool.get(name)
    a = await call(adapter, messages=[Message(role="user", content="one")])
    b = await call(adapter, messages=[Message(role="user", content="two")])
    again = await call(adapter, messages=[Message(role="user", content="one")])

    assert a.output != b.output
    assert again.output == a.output


# --- failures, classified ------------------------------------------------------------------

FAULTS = {
    "429": (AttemptOutcome.RATE_LIMITED, 429, True),
    "500": (AttemptOutcome.SERVER_ERROR, 500, True),
    "503": (AttemptOutcome.SERVER_ERROR, 503, True),
    "400": (AttemptOutcome.CLIENT_ERROR, 400, False),
    "malformed": (AttemptOutcome.MALFORMED, 200, True),
    "hang": (AttemptOutcome.TIMEOUT, None, True),
}


@pytest.mark.parametrize("name", ["openai-sim", "anthropic-sim"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_failures_are_classified_and_never_show_the_key(pool, simulator, name, fault):
    outcome, status_code, fallback = FAULTS[fault]
    await simulator.control.add_fault(fault, provider=name, count=1, retry_after_s=3)

    # Only a hang waits for the timeout; every other fault must be classified as itself however
    # slowly a loaded machine answers.
    with pytest.raises(ProviderCallError) as caught:
        await call(pool.get(name), timeout_s=0.3 if fault == "hang" else 10.0)

    err = caught.value
    assert (err.outcome, err.status_code, err.fallback) == (outcome, status_code, fallback)
    assert err.retry_after_s == (3.0 if fault == "429" else None)
    if status_code and status_code >= 400:
        assert err.message.startswith(f"HTTP {status_code}: ")
        assert "(simulated)" in err.message  # the provider's own message, not a generic one
    for text in (err.message, str(err), repr(err)):
        assert OPENAI_KEY not in text and ANTHROPIC_KEY not in text


@pytest.mark.parametrize("name", ["openai-sim", "anthropic-sim"])
async def test_a_missing_key_is_a_client_error_from_the_provider(simulator, monkeypatch, name):
    doc = policy_doc(simulator)
    monkeypatch.delenv(doc["providers"][name]["api_key_env"], raising=False)
    async with adapters(doc) as pool:
        with pytest.raises(ProviderCallError) as caught:
            await call(pool.get(name))

    assert (caught.value.outcome, caught.value.status_code) == (AttemptOutcome.CLIENT_ERROR, 401)
    assert not caught.value.fallback


@pytest.mark.parametrize("name", ["openai-sim", "anthropic-sim"])
async def test_connection_refused_is_a_connection_error(simulator, monkeypatch, name):
    monkeypatch.setenv("SB_OPENAI_SIM_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("SB_ANTHROPIC_SIM_API_KEY", ANTHROPIC_KEY)
    doc = policy_doc(simulator)
    doc["providers"][name]["base_url"] = f"http://127.0.0.1:{closed_port()}/v1"
    async with adapters(doc) as pool:
        with pytest.raises(ProviderCallError) as caught:
            await call(pool.get(name))

    err = caught.value
    assert err.outcome is AttemptOutcome.CONNECTION_ERROR and err.fallback
    assert err.status_code is None
    assert OPENAI_KEY not in err.message and ANTHROPIC_KEY not in err.message


async def echo_key_provider():
    """A real HTTP server that, like some OpenAI-compatible servers, repeats the key it was
    sent in its 401 error message."""

    async def handler(request: web.Request) -> web.Response:
        key = request.headers.get("authorization", "").removeprefix("Bearer ") or request.headers.get(
            "x-api-key", ""
        )
        return web.json_response(
            {"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error"}},
            status=401,
        )

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.mark.parametrize("name", ["openai-sim", "anthropic-sim"])
async def test_a_key_repeated_by_the_provider_is_not_repeated_in_the_error(simulator, monkeypatch, name):
    monkeypatch.setenv("SB_OPENAI_SIM_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("SB_ANTHROPIC_SIM_API_KEY", ANTHROPIC_KEY)
    runner, port = await echo_key_provider()
    try:
        doc = policy_doc(simulator)
        doc["providers"][name]["base_url"] = f"http://127.0.0.1:{port}/v1"
        async with adapters(doc) as pool:
            with pytest.raises(ProviderCallError) as caught:
                await call(pool.get(name))
    finally:
        await runner.cleanup()

    err = caught.value
    assert (err.outcome, err.status_code) == (AttemptOutcome.CLIENT_ERROR, 401)
    assert err.message.startswith("HTTP 401: Incorrect API key provided")
    assert OPENAI_KEY not in err.message and ANTHROPIC_KEY not in err.message


# --- what a provider receives ---------------------------------------------------------------

OPENAI_ANSWER = {
    "model": "gpt-sim-large",
    "choices": [{"message": {"role": "assistant", "content": "Rome."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 1},
}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_provider_gets_the_request_an_httpx_client_sends_and_its_cookies_back(
    simulator, monkeypatch, stream
):
    """Headers as an httpx client sends them (its defaults, then the adapter's), a cookie the
    provider set sent back on the next call (as load balancers in front of real APIs expect),
    and a gzip-compressed answer read."""
    monkeypatch.setenv("SB_OPENAI_SIM_API_KEY", OPENAI_KEY)
    seen: list = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read()))
        if stream:
            data = orjson.dumps({**OPENAI_ANSWER, "choices": [{"delta": {"content": "Rome."}}]})
            body = b"data: " + data + b"\n\ndata: [DONE]\n\n"
        else:
            body = orjson.dumps(OPENAI_ANSWER)
        response = web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})
        response.set_cookie("lb", "node-7")
        return response

    doc = policy_doc(simulator)
    async with provider_server(handler) as url:
        doc["providers"]["openai-sim"]["base_url"] = url
        async with adapters(doc) as pool:
            adapter = pool.get("openai-sim")
            for _ in range(2):
                if stream:
                    pieces, _s = await read_stream(adapter)
                    assert pieces == ["Rome."]
                else:
                    assert (await call(adapter)).output == "Rome."

    (first, body), (second, _) = seen
    assert orjson.loads(body)["model"] == "gpt-sim-large"
    expected = {
        "Accept": "*/*",
        "Accept-Encoding": "gzip, deflate",
        "Connection": "keep-alive",
        "User-Agent": f"python-httpx/{httpx.__version__}",
        "Content-Type": "application/json",
        "Authorization": f"Bearer {OPENAI_KEY}",
        "Content-Length": str(len(body)),
    }
    assert {k: first.get(k) for k in expected} == expected
    assert "Cookie" not in first
    assert second["Cookie"] == "lb=node-7"


# --- Retry-After ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("5", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (" 7 ", 7.0),
        ("-3", 0.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),  # an HTTP date: the configured default applies
    ],
)
def test_retry_after_header_parsing(header, seconds):
    assert _retry_after(header) == seconds


@pytest.mark.parametrize("name", ["openai-sim", "anthropic-sim"])
async def test_fractional_retry_after_from_a_real_429(pool, simulator, name):
    await simulator.control.add_fault("429", provider=name, count=1, retry_after_s=2.5)

    with pytest.raises(ProviderCallError) as caught:
        await call(pool.get(name))

    assert caught.value.outcome is AttemptOutcome.RATE_LIMITED
    assert caught.value.retry_after_s == 2.5


# --- answers the simulator cannot produce, from a real HTTP server -------------------------


def shape_case(name, status, body, outcome, *, content_type="application/json"):
    return pytest.param(name, status, body, content_type, outcome)


@pytest.mark.parametrize(
    ("name", "status", "body", "content_type", "outcome"),
    [
        shape_case(
            "openai-sim", 200, b"<html>oops</html>", AttemptOutcome.MALFORMED, content_type="text/html"
        ),
        shape_case("openai-sim", 200, b'"a string"', AttemptOutcome.MALFORMED),
        shape_case("openai-sim", 200, b'{"choices": []}', AttemptOutcome.MALFORMED),
        shape_case(
            "openai-sim", 200, b'{"choices": [{"message": {"content": [1]}}]}', AttemptOutcome.MALFORMED
        ),
        shape_case("openai-sim", 200, b'{"choices": [{"message": "x"}]}', AttemptOutcome.MALFORMED),
        shape_case(
            "openai-sim",
            200,
            b'{"choices": [{"message": {"content": "x"}}], "usage": "n/a"}',
            AttemptOutcome.MALFORMED,
        ),
        shape_case("anthropic-sim", 200, b"null", AttemptOutcome.MALFORMED),
        shape_case("anthropic-sim", 200, b'{"content": [{"type": "text"}]}', AttemptOutcome.MALFORMED),
        shape_case("anthropic-sim", 200, b'{"content": ["x"]}', AttemptOutcome.MALFORMED),
        shape_case("anthropic-sim", 200, b'{"content": "x"}', AttemptOutcome.MALFORMED),
        shape_case(
            "openai-sim",
            502,
            b"<html>bad gateway</html>",
            AttemptOutcome.SERVER_ERROR,
            content_type="text/html",
        ),
        shape_case("openai-sim", 408, b"{}", AttemptOutcome.TIMEOUT),
        shape_case(
            "anthropic-sim", 529, b'{"error": {"message": "overloaded"}}', AttemptOutcome.SERVER_ERROR
        ),
        shape_case(
            "openai-sim", 500, b'{"error": {"message": {"detail": "x"}}}', AttemptOutcome.SERVER_ERROR
        ),
        shape_case("anthropic-sim", 429, b'{"error": {"message": 42}}', AttemptOutcome.RATE_LIMITED),
    ],
)
async def test_answers_of_any_shape_are_classified(
    simulator, monkeypatch, name, status, body, content_type, outcome
):
    monkeypatch.setenv("SB_OPENAI_SIM_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("SB_ANTHROPIC_SIM_API_KEY", ANTHROPIC_KEY)
    doc = policy_doc(simulator)
    raised: BaseException | None = None
    async with fixed_provider(status, body, content_type) as url:
        doc["providers"][name]["base_url"] = url
        async with adapters(doc) as pool:
            try:
                await call(pool.get(name))
            except Exception as exc:  # what escapes is the point of the test
                raised = exc

    assert isinstance(raised, ProviderCallError), f"unclassified: {raised!r}"
    assert raised.outcome is outcome
    assert raised.status_code == status


# --- streaming -----------------------------------------------------------------------------


async def read_stream(adapter, params=None, timeout_s=5.0):
    """(pieces, the stream) of one streamed call, read to its end."""
    pieces = []
    async with adapter.stream(
        MODEL[adapter.name], CONVERSATION, params or CallParams(max_tokens=200), timeout_s
    ) as s:
        async for piece in s:
            pieces.append(piece)
    return pieces, s


@pytest.mark.parametrize("name", ["openai-sim", "anthropic-sim"])
async def test_a_stream_yields_the_answer_in_pieces_with_usage_at_the_end(pool, name):
    adapter = pool.get(name)
    whole = await call(adapter)

    pieces, stream = await read_stream(adapter)

    assert "".join(pieces) == whole.output
    assert len(pieces) == whole.completion_tokens > 1  # the simulator sends one word per chunk
    assert stream.ended
    assert (stream.prompt_tokens, stream.completion_tokens) == (whole.prompt_tokens, whole.completion_tokens)
    assert stream.finish_reason == "stop"
    assert stream.model == MODEL[name]

    _, capped = await read_stream(adapter, CallParams(max_tokens=2))
    assert (capped.completion_tokens, capped.finish_reason) == (2, "length")


@pytest.mark.parametrize("name", ["openai-sim", "anthropic-sim"])
async def test_a_stream_broken_after_five_chunks_raises_after_them(pool, simulator, name):
    await simulator.control.add_fault("break", provider=name, after_chunks=5, count=1)
    pieces = []
    with pytest.raises(ProviderCallError) as caught:
        async with pool.get(name).stream(MODEL[name], CONVERSATION, CallParams(max_tokens=200), 5.0) as s:
            async for piece in s:
                pieces.append(piece)
    assert len(pieces) == 5
    assert caught.value.outcome is AttemptOutcome.CONNECTION_ERROR
    assert not s.ended


@pytest.mark.parametrize("name", ["openai-sim", "anthropic-sim"])
async def test_a_stream_that_fails_as_a_whole_raises_before_any_piece(pool, simulator, name):
    await simulator.control.add_fault("429", provider=name, count=1, retry_after_s=3)
    with pytest.raises(ProviderCallError) as caught:
        async with pool.get(name).stream(MODEL[name], CONVERSATION, CallParams(max_tokens=9), 5.0):
            pytest.fail("a refused call has no stream")
    assert (caught.value.outcome, caught.value.retry_after_s) == (AttemptOutcome.RATE_LIMITED, 3)
    assert OPENAI_KEY not in caught.value.message and ANTHROPIC_KEY not in caught.value.message

    await simulator.control.add_fault("hang", provider=name, count=1)
    with pytest.raises(ProviderCallError) as caught:
        async with pool.get(name).stream(MODEL[name], CONVERSATION, CallParams(max_tokens=9), 0.3):
            pytest.fail("a silent provider has no stream")
    assert caught.value.outcome is AttemptOutcome.TIMEOUT


ANTHROPIC_ERROR_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"model":"m","usage":{"input_tokens":7}}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hel"}}\n\n'
    b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
)


async def test_an_error_event_mid_stream_is_a_server_error(simulator, monkeypatch):
    async with fixed_provider(200, ANTHROPIC_ERROR_STREAM, "text/event-stream") as url:
        doc = policy_doc(simulator)
        doc["providers"]["anthropic-sim"]["base_url"] = url
        async with adapters(doc) as p:
            adapter = p.get("anthropic-sim")
            with pytest.raises(ProviderCallError) as caught:
                await read_stream(adapter)
    assert caught.value.outcome is AttemptOutcome.SERVER_ERROR
    assert "Overloaded" in caught.value.message


async def test_pieces_arrive_while_the_provider_is_still_answering(simulator):
    """The first piece reaches the caller before the provider has sent the rest: the provider
    waits for the caller to have it, so a transport that buffered the body would hang here."""
    seen_first = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"index":0,"delta":{"content":"first"}}]}\n\n')
        await asyncio.wait_for(seen_first.wait(), 5)
        await response.write(
            b'data: {"choices":[{"index":0,"delta":{"content":" second"}}]}\n\ndata: [DONE]\n\n'
        )
        return response

    async with provider_server(handler) as url:
        doc = policy_doc(simulator)
        doc["providers"]["openai-sim"]["base_url"] = url
        async with adapters(doc) as p:
            pieces = []
            async with p.get("openai-sim").stream(
                "gpt-sim-large", CONVERSATION, CallParams(max_tokens=9), 5
            ) as s:
                async for piece in s:
                    pieces.append(piece)
                    seen_first.set()
    assert pieces == ["first", " second"]
    assert s.ended and s.completion_tokens is None  # this provider did not report usage


@pytest.mark.parametrize("first", [b"", b'data: {"choices":[{"index":0,"delta":{"content":"first"}}]}\n\n'])
async def test_a_provider_quiet_for_the_timeout_ends_the_stream_as_a_timeout(simulator, first):
    """Headers sent, then silence, before the first event or after it: the call times out at the
    tier's timeout, whether or not a piece was read."""
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(first)
        await asyncio.wait_for(release.wait(), 10)
        return response

    async with provider_server(handler) as url:
        doc = policy_doc(simulator)
        doc["providers"]["openai-sim"]["base_url"] = url
        async with adapters(doc) as p:
            pieces = []
            with pytest.raises(ProviderCallError) as caught:
                async with asyncio.timeout(5):  # the test's own guard, well above the tier's
                    async with p.get("openai-sim").stream(
                        "gpt-sim-large", CONVERSATION, CallParams(max_tokens=9), 0.3
                    ) as s:
                        async for piece in s:
                            pieces.append(piece)
            release.set()
    assert caught.value.outcome is AttemptOutcome.TIMEOUT
    assert pieces == (["first"] if first else [])

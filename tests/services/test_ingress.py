"""The OpenAI-compatible ingress, driven by the official `openai` client over real HTTP: a call is
the agent's invocation (audit, provider, ledger), every refusal is its documented status and
OpenAI error object, a retry with the same Idempotency-Key is the first invocation again, and
keys are checked."""

from __future__ import annotations

import signal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import openai
import orjson
import pytest

from services.budget import limits
from services.budget.ledgers import LedgerStore
from shared import names
from shared.contracts import BlockRequest, Pause
from shared.switches import SwitchStore
from tests.support.fallback import wait_events
from tests.support.helpers import (
    SIM_KEYS,
    ServiceProcess,
    free_port,
    infra_env,
    ops_get,
    process_metric,
    run_sbctl,
)
from tests.support.hitl import REFUND, add_reviewer, api
from tests.support.ingress import client, issue_key
from tests.support.stack import operator_connect, wait_for
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(90)
WF = "support-triage"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def clients():
    """Make OpenAI clients (`clients(port, key)`), closed after the test."""
    made: list[openai.AsyncOpenAI] = []

    def make(api_port: int, key: str, **options) -> openai.AsyncOpenAI:
        made.append(client(api_port, key, **options))
        return made[-1]

    yield make
    for oa in made:
        await oa.close()


def port(stack) -> int:
    return stack["ingress"].api_port


async def sim_total(stack) -> int:
    return (await stack.sim.control.stats())["total"]


async def test_a_call_is_the_keys_agents_invocation_of_the_workflow(running, clients):
    key = await issue_key(running, "triage-bot")
    before = await sim_total(running)

    raw = await clients(port(running), key).chat.completions.with_raw_response.create(
        model=WF,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        max_tokens=50,
        extra_headers={"X-Session-Id": "s-http"},
    )
    completion = raw.parse()

    assert raw.http_response.status_code == 200
    assert completion.choices[0].message.content.startswith("[openai-sim/gpt-sim-large] ")
    assert completion.model == "gpt-sim-large"
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    board = completion.model_extra["switchboard"]
    assert (board["status"], board["workflow"], board["provider"]) == ("success", WF, "openai-sim")
    assert raw.headers["x-request-id"] == board["invocation_id"]
    assert completion.id == f"chatcmpl-{board['invocation_id']}"
    assert await sim_total(running) == before + 1
    (event,) = await wait_events(running, "invocation", invocation_id=board["invocation_id"])
    assert (event["agent"], event["session_id"], event["max_tokens"]) == ("triage-bot", "s-http", 50)
    assert event["message_count"] == 2


async def test_the_callers_trace_context_goes_on_to_the_invocation(running, clients):
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    reply = await clients(port(running), await issue_key(running, "triage-bot")).chat.completions.create(
        model=WF, messages=HELLO, extra_headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
    )
    assert reply.model_extra["switchboard"]["trace_id"] == trace_id


async def test_models_are_the_workflows_the_agent_may_use(running, clients):
    policy = running.policy()
    policy["agents"] = {"triage-bot": {"workflows": [WF]}}
    await running.apply(policy)
    limited = clients(port(running), await issue_key(running, "triage-bot"))
    anyone = clients(port(running), await issue_key(running, "alice"))

    assert [m.id for m in (await limited.models.list()).data] == [WF]
    assert [m.id for m in (await anyone.models.list()).data] == sorted(policy["workflows"])
    with pytest.raises(openai.PermissionDeniedError) as refused:
        await limited.chat.completions.create(model="research-summary", messages=HELLO)
    assert refused.value.code == "agent_not_allowed"


async def test_a_retry_with_the_same_idempotency_key_is_the_first_invocation(running, redis, clients):
    oa = clients(port(running), await issue_key(running, "triage-bot"))
    before = await sim_total(running)
    headers = {"Idempotency-Key": "http-retry-1", "X-Session-Id": "s-retry"}

    first = await oa.chat.completions.with_raw_response.create(
        model=WF, messages=HELLO, extra_headers=headers
    )
    again = await oa.chat.completions.with_raw_response.create(
        model=WF, messages=HELLO, extra_headers=headers
    )

    assert first.headers["x-request-id"] == again.headers["x-request-id"] == "http-retry-1"
    one, two = first.parse(), again.parse()
    assert one.id == two.id == "chatcmpl-http-retry-1"
    assert one.choices[0].message.content == two.choices[0].message.content
    assert one.usage == two.usage
    assert await sim_total(running) == before + 1  # the provider was called once
    used = one.usage.prompt_tokens + one.usage.completion_tokens
    budget = running["budget"].config.active.policy.workflows[WF].budget
    session_ledger = limits.ledgers(running.env, WF, budget, "s-retry")[0]

    async def settled_once() -> bool:
        balance = await LedgerStore(redis).balance(session_ledger)
        return (balance.used, balance.reserved) == (used, 0)

    await wait_for(settled_once, message=f"the session ledger to hold {used} tokens, once")
    with pytest.raises(openai.UnprocessableEntityError) as conflict:  # the same key, another prompt
        await oa.chat.completions.create(
            model=WF, messages=[{"role": "user", "content": "other"}], extra_headers=headers
        )
    assert conflict.value.code == "idempotency_conflict"
    assert await sim_total(running) == before + 1


async def _error(oa: openai.AsyncOpenAI, **request) -> tuple[int, dict, httpx.Headers]:
    headers = request.pop("headers", {})
    request.setdefault("model", WF)
    request.setdefault("messages", HELLO)
    with pytest.raises(openai.APIStatusError) as caught:
        await oa.chat.completions.create(**request, extra_headers=headers)
    response = caught.value.response
    return response.status_code, response.json()["error"], response.headers


BAD_REQUESTS = [
    # (request, status, type, code, param)
    (dict(model="no-such-workflow"), 404, "not_found_error", "unknown_workflow", None),
    (dict(model="gpt-4.1"), 404, "not_found_error", "unknown_workflow", None),
    (dict(temperature=5), 400, "invalid_request_error", "invalid_request", "temperature"),
    (dict(n=2), 400, "invalid_request_error", "invalid_request", "n"),
    (dict(extra_body={"tools": []}), 400, "invalid_request_error", "invalid_request", "tools"),
    (dict(model="refunds", stream=True), 400, "invalid_request_error", "stream_not_allowed", None),
    (dict(messages=[]), 400, "invalid_request_error", "invalid_request", "messages"),
    (
        dict(headers={"Idempotency-Key": "not a key"}),
        400,
        "invalid_request_error",
        "invalid_request",
        "Idempotency-Key",
    ),
    (
        dict(messages=[{"role": "user", "content": "word " * 30_000}]),
        429,
        "insufficient_quota",
        "budget_exceeded",
        None,
    ),
]


async def test_bad_requests_and_a_budget_breach_are_refused_before_any_provider(running, clients):
    oa = clients(port(running), await issue_key(running, "triage-bot"))
    before = await sim_total(running)
    for request, status, kind, code, param in BAD_REQUESTS:
        got_status, error, headers = await _error(oa, **dict(request))
        assert (got_status, error["type"], error["code"], error["param"]) == (status, kind, code, param), (
            request
        )
        assert error["message"]
        assert headers["x-should-retry"] == "false"
    assert await sim_total(running) == before


async def test_control_plane_refusals_map_to_their_statuses(running, clients):
    await running.apply()
    oa = clients(port(running), await issue_key(running, "triage-bot"))
    nc = await operator_connect(running.infra.nats_url)
    try:
        # a provider error on every tier
        await running.sim.control.add_fault("500")
        status, error, headers = await _error(oa)
        assert (status, error["type"], error["code"]) == (502, "api_error", "all_tiers_failed")
        assert headers["x-should-retry"] == "true" and error["invocation_id"] == headers["x-request-id"]
        await running.sim.control.clear_faults()

        # no route: every provider blocked by an operator
        for provider in ("openai-sim", "anthropic-sim"):
            block = BlockRequest(provider=provider, blocked=True, by="tests")
            await nc.request(names.router_block(running.env), block.model_dump_json().encode(), timeout=5)
        status, error, _ = await _error(oa)
        assert (status, error["type"], error["code"]) == (503, "service_unavailable", "no_route")
        for provider in ("openai-sim", "anthropic-sim"):
            block = BlockRequest(provider=provider, blocked=False, by="tests")
            await nc.request(names.router_block(running.env), block.model_dump_json().encode(), timeout=5)

        # paused by an operator
        await SwitchStore(nc.jetstream(), running.env).change(
            lambda pauses: pauses.workflows.__setitem__(WF, Pause(reason="drill", by="tests", at=0))
        )
        await wait_for(lambda: WF in running["gateway"].switches.current.workflows, timeout=2)
        status, error, _ = await _error(oa)
        assert (status, error["code"]) == (503, "workflow_paused")
        assert "drill" in error["message"]
    finally:
        await nc.close()

    # no gateway at all
    await running.stop("gateway")
    status, error, _ = await _error(oa)
    assert (status, error["code"]) == (503, "control_plane_unavailable")


async def test_a_held_invocation_is_202_and_its_decision_comes_to_the_same_key(running, clients):
    oa = clients(port(running), await issue_key(running, "triage-bot"))
    request = dict(
        model="refunds",
        messages=[{"role": "user", "content": "Refund order 42."}],
        metadata=REFUND,  # the example policy's pre rule: amount over 500
        extra_headers={"Idempotency-Key": "held-over-http"},
    )

    held = await oa.chat.completions.with_raw_response.create(**request)
    assert held.http_response.status_code == 202
    error = held.http_response.json()["error"]
    assert (error["type"], error["code"], error["invocation_id"]) == (
        "pending_review",
        "pending_review",
        "held-over-http",
    )
    assert await sim_total(running) == 0

    token = await add_reviewer(running, "rita", "payments")
    async with api(running, token) as http:
        decided = await http.post(f"/v1/reviews/{error['review_id']}/reject", json={"reason": "too much"})
        assert decided.status_code == 200, decided.text

    async def rejected() -> bool:
        response = await oa.chat.completions.with_raw_response.create(**request)
        return response.http_response.status_code != 202

    with pytest.raises(openai.PermissionDeniedError) as refused:
        await wait_for(rejected, message="the decision to reach the same key")
    assert refused.value.code == "review_rejected" and "too much" in refused.value.message
    assert await sim_total(running) == 0


async def test_a_call_without_a_valid_key_is_401_and_reaches_nothing(running, clients):
    before = await sim_total(running)
    for key in ("sbk_unknown", "not-a-key"):
        with pytest.raises(openai.AuthenticationError) as refused:
            await clients(port(running), key).chat.completions.create(model=WF, messages=HELLO)
        assert refused.value.code == "unauthorized"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port(running)}") as http:
        response = await http.post(
            "/v1/chat/completions", content=orjson.dumps({"model": WF, "messages": HELLO})
        )
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
        response = await http.get("/v1/embeddings")
        assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
        response = await http.get("/v1/chat/completions")
        assert (response.status_code, response.headers["allow"]) == (405, "POST")
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert await sim_total(running) == before


async def test_as_a_process_with_keys_from_sbctl_it_counts_exactly_and_stops_cleanly(
    stack, tmp_path, clients
):
    await stack.start("recorder", "router", "budget", "gateway")
    api_port = free_port()
    env = infra_env(
        stack.infra,
        SB_ENV=stack.env,
        SB_CONFIG_DIR=str(stack.policy_dir),
        SB_SIMULATOR_URL=stack.sim.url,
        SB_API_PORT=str(api_port),
        **SIM_KEYS,
    )
    proc = ServiceProcess("ingress", env, tmp_path)
    await proc.start()
    try:
        await proc.wait_ready()
        health = (await ops_get(proc.port, "/healthz")).json()
        assert (health["service"], health["api_port"]) == ("ingress", api_port)
        ready = (await ops_get(proc.port, "/readyz")).json()
        assert ready["checks"] == {"nats": "ok", "postgres": "ok", "config": "ok"}

        code, out, err = await run_sbctl(
            stack.infra,
            *("ingress", "keys", "add", "--agent", "triage-bot", "--reason", "test bot", "--env", stack.env),
            "--json",
            extra_env={"SB_OPERATOR": "olga"},
        )
        assert code == 0, out + err
        issued = orjson.loads(out)
        assert issued["key"].startswith("sbk_") and issued["prefix"] == issued["key"][:12]
        stored = await _key_rows(stack)
        assert [(r["agent"], r["created_by"], r["reason"]) for r in stored] == [
            ("triage-bot", "olga", "test bot")
        ]
        assert issued["key"] not in str(stored)  # only its hash

        oa = clients(api_port, issued["key"])
        chat = "/v1/chat/completions"
        for _ in range(3):
            await oa.chat.completions.create(model=WF, messages=HELLO)
        with pytest.raises(openai.NotFoundError):
            await oa.chat.completions.create(model="no-such-workflow", messages=HELLO)
        assert await process_metric(proc.port, REQUESTS, route=chat, code="200") == 3  # a fresh process
        assert await process_metric(proc.port, REQUESTS, route=chat, code="404") == 1
        assert await process_metric(proc.port, LATENCY + "_count", route=chat) == 4

        revoke = ("ingress", "keys", "revoke", issued["key_id"], "--reason", "rotated", "--env", stack.env)
        code, out, err = await run_sbctl(stack.infra, *revoke, extra_env={"SB_OPERATOR": "olga"})
        assert code == 0, out + err
        with pytest.raises(openai.AuthenticationError):  # the replica that revoked it: at once
            await oa.chat.completions.create(model=WF, messages=HELLO)
        code, out, _ = await run_sbctl(
            stack.infra, "ingress", "keys", "list", "--all", "--env", stack.env, "--json"
        )
        (listed,) = orjson.loads(out)["keys"]
        assert (listed["revoked_by"], listed["revoke_reason"], listed.get("key")) == ("olga", "rotated", None)
        levers = await wait_events(stack, "lever", 2)
        assert [(e["lever"], e["reason"]) for e in levers] == [
            ("ingress_key.add", "test bot"),
            ("ingress_key.revoke", "rotated"),
        ]

        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    finally:
        await proc.stop()


REQUESTS = "switchboard_ingress_requests_total"
LATENCY = "switchboard_ingress_request_latency_seconds"


async def _key_rows(stack) -> list[dict]:
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        return [dict(r) for r in await conn.fetch("select * from ingress_keys where env = $1", stack.env)]
    finally:
        await conn.close()


async def test_keys_unreadable_during_a_database_outage_are_503_and_it_recovers(stack, infra, clients):
    parts = urlsplit(infra.database_url)
    proxy = await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    host_port = parts.netloc.rsplit("@", 1)[-1]
    proxied = urlunsplit(parts._replace(netloc=parts.netloc.replace(host_port, f"127.0.0.1:{proxy.port}")))
    try:
        await stack.start("router", "budget", "gateway")
        await stack.start(ingress={"database_url": proxied, "key_cache_s": 0})  # every request reads
        oa = clients(port(stack), await issue_key(stack, "triage-bot"))
        assert (await oa.chat.completions.create(model=WF, messages=HELLO)).choices

        await proxy.cut()
        status, error, headers = await _error(oa)
        assert (status, error["type"], error["code"]) == (503, "service_unavailable", "unavailable")
        assert headers["x-should-retry"] == "true"

        await proxy.start()

        async def answers() -> bool:
            try:
                return bool((await oa.chat.completions.create(model=WF, messages=HELLO)).choices)
            except openai.APIStatusError:
                return False

        await wait_for(answers, timeout=20, message="keys readable again")
    finally:
        await proxy.cut()

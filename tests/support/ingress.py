"""Helpers for the ingress tests: API keys issued over the ingress's NATS contract (as sbctl
does), and the official OpenAI client pointed at a running ingress."""

from __future__ import annotations

import openai

from shared import codec, names
from shared.contracts import IngressKeyAdd, IngressKeysReply
from tests.support.stack import operator_connect


async def issue_key(stack, agent: str) -> str:
    """An API key acting as `agent`, issued the way `sbctl ingress keys add` does."""
    nc = await operator_connect(stack.infra.nats_url)
    try:
        msg = await nc.request(
            names.ingress(stack.env, "keys.add"),
            codec.encode(IngressKeyAdd(agent=agent, by="tests", reason="test key")),
            timeout=5,
        )
    finally:
        await nc.close()
    reply = codec.decode(msg.data, IngressKeysReply)
    assert reply.error is None, reply.error
    return reply.keys[0].key


def client(port: int, key: str, **options) -> openai.AsyncOpenAI:
    """The official client with `base_url` at the ingress; no retries unless asked for."""
    options.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, timeout=30, **options)

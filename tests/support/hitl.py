"""Helpers for the review-gate tests: reviewers and their tokens (over the hitl service's NATS
contract, as sbctl does), the reviewer API over real HTTP, the hitl tables read back, final
results on sb.<env>.result.<id>, and review policy edits."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import httpx
import orjson

from shared import codec, names
from shared.contracts import InvokeResult, ReviewerAdd, ReviewersReply
from tests.support.stack import operator_connect, wait_for

REFUND = {"amount": 900}  # matches the example policy's pre rule `large-refund`
LETTER = {"channel": "email"}  # matches its post rule `outbound-refund-letter`


def review_policy(stack, **queues: dict) -> dict:
    """The test's policy with queues changed (e.g. short timeouts), as a document to apply."""
    doc = stack.policy()
    for name, changes in queues.items():
        doc["review_queues"][name] = {**doc["review_queues"].get(name, {}), **changes}
    return doc


def write_review_policy(stack, **queues: dict) -> None:
    """Change the review queues in the test's policy files, before services start."""
    import yaml

    path = stack.policy_dir / "reviews.yaml"
    doc = yaml.safe_load(path.read_text())
    for name, changes in queues.items():
        doc["review_queues"][name] = {**doc["review_queues"].get(name, {}), **changes}
        for key in [k for k, v in doc["review_queues"][name].items() if v is None]:
            del doc["review_queues"][name][key]
    path.write_text(yaml.safe_dump(doc))


async def add_reviewer(stack, name: str, *queues: str) -> str:
    """Issue a reviewer token the way `sbctl hitl reviewers add` does; returns the token."""
    nc = await operator_connect(stack.infra.nats_url)
    try:
        msg = await nc.request(
            names.hitl(stack.env, "reviewers.add"),
            codec.encode(ReviewerAdd(name=name, queues=list(queues), by="tests")),
            timeout=5,
        )
    finally:
        await nc.close()
    reply = codec.decode(msg.data, ReviewersReply)
    assert reply.error is None, reply.error
    return reply.reviewers[0].token


@contextlib.asynccontextmanager
async def api(stack, token: str | None = None, port: int | None = None):
    """The reviewer API of the stack's hitl service (or of the one at `port`)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    port = port or stack["hitl"].api_port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as http:
        yield http


async def db_rows(stack, sql: str, *args) -> list[dict]:
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        return [dict(r) for r in await conn.fetch(sql, stack.env, *args)]
    finally:
        await conn.close()


async def reviews(stack, invocation_id: str) -> list[dict]:
    """Every review of an invocation, oldest first."""
    return await db_rows(
        stack,
        "select * from hitl_reviews where env = $1 and invocation_id = $2 order by requested_at, id",
        invocation_id,
    )


async def audit(stack, invocation_id: str) -> list[dict]:
    return await db_rows(
        stack, "select * from hitl_audit where env = $1 and invocation_id = $2 order by id", invocation_id
    )


async def wait_all_acted(stack, invocation_ids: list[str], timeout: float = 20.0) -> None:
    """Until the latest review of every invocation has been acted on."""

    async def acted() -> bool:
        for invocation_id in invocation_ids:
            rows = await reviews(stack, invocation_id)
            if not rows or rows[-1]["acted_at"] is None:
                return False
        return True

    await wait_for(acted, timeout=timeout, interval=0.05, message="every review acted on")


async def wait_acted(stack, review_id: str, timeout: float = 15.0) -> dict:
    rows: list[dict] = []

    async def acted() -> bool:
        rows[:] = await db_rows(
            stack, "select * from hitl_reviews where env = $1 and id = $2 and acted_at is not null", review_id
        )
        return bool(rows)

    await wait_for(acted, timeout=timeout, interval=0.05, message=f"review {review_id} acted on")
    return rows[0]


class Results:
    """Final results on sb.<env>.result.> as they are published (subscribe before deciding)."""

    def __init__(self) -> None:
        self.seen: list[InvokeResult] = []
        self._nc = None

    async def start(self, stack) -> Results:
        self._nc = await operator_connect(stack.infra.nats_url)

        async def on_msg(msg) -> None:
            self.seen.append(codec.decode(msg.data, InvokeResult))

        await self._nc.subscribe(names.result(stack.env, "*"), cb=on_msg)
        await self._nc.flush()
        return self

    def of(self, invocation_id: str) -> list[InvokeResult]:
        return [r for r in self.seen if r.invocation_id == invocation_id]

    async def wait(self, invocation_id: str, timeout: float = 15.0) -> InvokeResult:
        await wait_for(lambda: self.of(invocation_id), timeout=timeout, message=f"result of {invocation_id}")
        return self.of(invocation_id)[0]

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()


@contextlib.asynccontextmanager
async def results(stack):
    r = await Results().start(stack)
    try:
        yield r
    finally:
        await r.close()


def body(response: httpx.Response) -> dict:
    return orjson.loads(response.content)


async def settle(seconds: float) -> None:
    """Let background work that must NOT happen have its chance (used only to prove a negative)."""
    await asyncio.sleep(seconds)

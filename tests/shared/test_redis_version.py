"""Redis 7.0 or later is required: the machine's Redis passes the start-up check, and a service
pointed at an older server exits at start with the coded error `unsupported_dependency`.

No Redis older than 7 can be installed here, so the older server is a stand-in that answers the
commands a client sends at start-up the way Redis 6.2 does (HELLO 3, PING, INFO with its version;
an error for CLIENT SETINFO, which 6.2 lacks), over real TCP; the refusal comes before anything
else is asked."""

from __future__ import annotations

import asyncio
import sys

import orjson
import pytest
import redis.asyncio as aioredis

from shared import redis_version
from switchboard_sdk import errors
from tests.support.helpers import free_port, infra_env
from tests.support.stack import REPO

OLD_INFO = b"# Server\r\nredis_version:6.2.14\r\nredis_mode:standalone\r\n"
OLD_HELLO = (  # RESP3 map, as 6.2 answers HELLO 3
    b"%7\r\n+server\r\n+redis\r\n+version\r\n+6.2.14\r\n+proto\r\n:3\r\n+id\r\n:7\r\n"
    b"+mode\r\n+standalone\r\n+role\r\n+master\r\n+modules\r\n*0\r\n"
)


def test_versions_compare_by_number():
    assert redis_version.parse("7.0.15") == (7, 0, 15)
    assert redis_version.parse("6.2.14") < redis_version.MINIMUM <= redis_version.parse("7.0.0")
    assert redis_version.parse("10.0.1") > redis_version.MINIMUM
    assert redis_version.parse("7.2.4-valkey") == (7, 2, 4)


async def test_the_redis_in_use_is_supported(infra):
    client = aioredis.from_url(infra.redis_url)
    try:
        version = await redis_version.require_supported(client)
    finally:
        await client.aclose()
    assert version is not None and redis_version.parse(version) >= redis_version.MINIMUM


async def _old_redis(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer RESP commands as Redis 6.2: HELLO, PING, INFO, and an error for anything else."""
    try:
        while line := await reader.readline():
            if not line.startswith(b"*"):
                break
            args = []
            for _ in range(int(line[1:])):
                size = int((await reader.readline())[1:])
                args.append((await reader.readexactly(size + 2))[:-2].upper())
            if args[0] == b"HELLO":
                writer.write(OLD_HELLO)
            elif args[0] == b"PING":
                writer.write(b"+PONG\r\n")
            elif args[0] == b"INFO":
                writer.write(b"$%d\r\n%s\r\n" % (len(OLD_INFO), OLD_INFO))
            else:
                writer.write(b"-ERR unknown command or subcommand (Redis 6.2 stand-in)\r\n")
            await writer.drain()
    finally:
        writer.close()


@pytest.fixture
async def old_redis():
    port = free_port()
    server = await asyncio.start_server(_old_redis, "127.0.0.1", port)
    yield f"redis://127.0.0.1:{port}/0"
    server.close()
    await server.wait_closed()


async def test_the_check_refuses_redis_6(old_redis):
    client = aioredis.from_url(old_redis)
    try:
        with pytest.raises(errors.UnsupportedDependency, match=r"Redis 6\.2\.14 is too old"):
            await redis_version.require_supported(client)
    finally:
        await client.aclose()


async def test_a_service_on_redis_6_exits_at_start_with_a_coded_error(infra, old_redis):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.router",
        cwd=REPO,
        env=infra_env(infra, SB_REDIS_URL=old_redis, SB_ENV="redis-too-old"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)

    assert proc.returncode == 1, out.decode()
    [line] = [orjson.loads(x) for x in out.splitlines() if x.strip()]  # one line, no traceback
    assert (line["level"], line["event"]) == ("critical", "cannot start")
    assert line["code"] == "unsupported_dependency"
    assert "Redis 6.2.14 is too old" in line["error"]

"""Serving an ASGI application (the reviewer API, the ingress's API) inside a service process, on
the service's loop.

uvicorn runs as a task beside the NATS handlers; the service owns the signals, and the exit
stack stops the server (in-flight requests finish) before NATS and the pools close.
"""

from __future__ import annotations

import asyncio
import socket
from contextlib import AsyncExitStack, suppress

import uvicorn


async def serve(app, host: str, port: int, stack: AsyncExitStack) -> int:
    """Start serving `app` on host:port (0: any free port); returns the bound port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # the service owns SIGTERM
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def stop() -> None:
        server.should_exit = True
        with suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()

    stack.push_async_callback(stop)
    # uvicorn offers no event to wait on
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
    return sock.getsockname()[1]

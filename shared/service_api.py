"""The NATS service API ($SRV.PING, $SRV.INFO, $SRV.STATS) for every Switchboard process,
through nats-py's `nats.micro`, so standard NATS tooling (`nats micro list|info|stats`) and
`sbctl status` see each replica: its id, version, environment and, per endpoint, requests,
errors and processing time.

A `nats.micro` endpoint runs its handler inside the subscription's callback, one request at a
time, and stops without draining; the bus needs concurrent handlers and a drain on shutdown.
So the bus keeps its own subscriptions, counts each one in an `Endpoint`, and the registered
service reports those endpoints in its INFO and STATS answers.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from importlib import metadata

from nats.aio.client import Client as NATS
from nats.micro.service import EndpointInfo, EndpointStats, Service, ServiceConfig, ServiceInfo, ServiceStats

SERVICE_PREFIX = "switchboard-"  # service names: switchboard-gateway, switchboard-router, ...


@dataclass
class Endpoint:
    """One subscription of the bus and what it has answered."""

    name: str
    subject: str
    queue_group: str
    requests: int = 0
    errors: int = 0  # answered with an error reply
    processing_ns: int = 0
    last_error: str | None = None  # the code of the last error reply

    def record(self, elapsed_ns: int, error_code: str | None) -> None:
        self.requests += 1
        self.processing_ns += elapsed_ns
        if error_code is not None:
            self.errors += 1
            self.last_error = error_code


def endpoint_name(subject: str) -> str:
    """`sb.<env>.router.status` -> `router-status`; wildcards dropped (`sb.<env>.invoke.*` -> `invoke`)."""
    return "-".join(token for token in subject.split(".")[2:] if token not in ("*", ">"))


def version() -> str:
    return metadata.version("switchboard")


class Registration(Service):
    """A `nats.micro` service whose INFO and STATS list the bus's endpoints."""

    def __init__(self, nc: NATS, config: ServiceConfig, endpoints: list[Endpoint]) -> None:
        super().__init__(nc, config)
        self.endpoints = endpoints

    def info(self) -> ServiceInfo:
        return replace(
            super().info(),
            endpoints=[
                EndpointInfo(name=e.name, subject=e.subject, queue_group=e.queue_group)
                for e in self.endpoints
            ],
        )

    def stats(self) -> ServiceStats:
        return replace(
            super().stats(),
            endpoints=[
                EndpointStats(
                    name=e.name,
                    subject=e.subject,
                    queue_group=e.queue_group,
                    num_requests=e.requests,
                    num_errors=e.errors,
                    last_error=e.last_error,
                    processing_time=e.processing_ns,
                    average_processing_time=e.processing_ns // e.requests if e.requests else 0,
                )
                for e in self.endpoints
            ],
        )


async def register(nc: NATS, *, service: str, env: str, endpoints: list[Endpoint]) -> Registration:
    """Answer $SRV.PING/INFO/STATS as `switchboard-<service>` of `env`, until `stop()`."""
    config = ServiceConfig(
        name=f"{SERVICE_PREFIX}{service}",
        version=version(),
        description=f"Switchboard {service}",
        metadata={"env": env, "host": socket.gethostname(), "pid": str(os.getpid())},
    )
    registration = Registration(nc, config, endpoints)
    await registration.start()
    return registration

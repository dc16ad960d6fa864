"""What every sbctl command starts from: its settings, who is operating, and a NATS connection
that gives up quickly when the server cannot be reached."""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from shared.bus import Bus
from shared.contracts import LeverEvent
from shared.settings import Settings
from switchboard_sdk import errors

M = TypeVar("M", bound=BaseModel)

# Exit codes, documented in docs/runbook.md.
EXIT_OK = 0  # done
EXIT_FAILED = 1  # ran, and the answer is no: a check failed, a replica rejected, a refusal
EXIT_USAGE = 2  # the command line is wrong
EXIT_UNAVAILABLE = 3  # NATS, PostgreSQL or a service could not be reached


class SbctlSettings(Settings):
    operator: str | None = None  # SB_OPERATOR: the configured operator name
    connect_s: float = 3.0  # how long to try reaching NATS before giving up


@dataclass(frozen=True)
class Operator:
    """Who pulls a lever, and how we know it."""

    name: str
    source: str  # "configured" (SB_OPERATOR) or "os" (the login user of this machine)


def operator(settings: SbctlSettings) -> Operator:
    """The operator behind this command.

    This is the one place where identity is decided. When operators authenticate (per-operator
    NATS credentials or an identity provider's token), return the verified subject here with
    source "verified"; every lever already records what this returns. Never taken from a
    command-line flag: a free-text flag proves nothing.
    """
    if settings.operator:
        return Operator(settings.operator, "configured")
    return Operator(f"{getpass.getuser()}@{socket.gethostname()}", "os")


async def connect(settings: SbctlSettings) -> Bus:
    return await Bus.connect(
        settings.nats_url,
        env=settings.env,
        service="sbctl",
        first_connect_s=settings.connect_s,
        settings=settings,  # the operator's credentials and TLS
    )


async def record_lever(
    bus: Bus, who: Operator, lever: str, target: str, reason: str, changed: bool | None = None
) -> None:
    """Put an operator's action in the audit log (event kind `lever`)."""
    await bus.ensure_events_stream()
    await bus.emit(
        LeverEvent(
            lever=lever, target=target, reason=reason, by=who.name, by_source=who.source, changed=changed
        )
    )


class OptionRefused(Exception):
    """An option the request's contract refuses (a reason over 200 characters, say): a usage
    error (`invalid_request`), reported before anything is sent."""

    code = errors.InvalidRequest.code

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def from_options(model: type[M], **fields) -> M:
    """The request built from the command line's options, or `OptionRefused` naming each field."""
    try:
        return model(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors(include_url=False)
        )
        raise OptionRefused(problems) from None

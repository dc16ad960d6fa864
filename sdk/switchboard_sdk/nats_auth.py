"""How a process authenticates to NATS: its user, password and TLS, from settings only.

Every process connects as the user of its role; the server's permissions for that user are
generated from `deploy/nats/roles.yaml`. An agent's user is `agent-<name>`, and that name is
the identity the gateway records (it is a token of the only invoke subject the user may
publish on). Replies come back on an inbox under the user's own name, so a user may
subscribe only to its own replies. With no credentials configured nothing changes: the
open local setup.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

from switchboard_sdk.settings import ConnectionSettings

AGENT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
OPERATOR = "operator"


def agent_user(agent: str) -> str:
    """The NATS user of an agent."""
    return f"agent-{check_agent(agent)}"


def check_agent(agent: str) -> str:
    """An agent name is a subject token: refuse one that is not."""
    if not AGENT_PATTERN.match(agent):
        raise ValueError(f"agent name {agent!r} must match {AGENT_PATTERN.pattern}")
    return agent


def inbox_prefix(user: str) -> str:
    """Where a user's replies arrive; its permissions let it subscribe only here."""
    return f"_INBOX.{user}"


def password(settings: ConnectionSettings, user: str) -> str | None:
    if settings.nats_password_file:
        return Path(settings.nats_password_file).read_text().strip()
    if settings.nats_credentials_dir:
        path = Path(settings.nats_credentials_dir) / user
        if path.is_file():
            return path.read_text().strip()
    if settings.nats_password is not None:
        return settings.nats_password.get_secret_value()
    return None


def tls_context(settings: ConnectionSettings) -> ssl.SSLContext | None:
    if not settings.nats_tls_ca:
        return None
    context = ssl.create_default_context(cafile=settings.nats_tls_ca)
    if settings.nats_tls_cert:
        context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
    return context


def connect_options(settings: ConnectionSettings, role_user: str) -> dict:
    """Keyword arguments for `nats.connect` for a process of `role_user` (empty when open)."""
    options: dict = {}
    tls = tls_context(settings)
    if tls is not None:
        options["tls"] = tls
    user = settings.nats_user or role_user
    secret = password(settings, user)
    if secret is not None:
        options.update(user=user, password=secret, inbox_prefix=inbox_prefix(user))
    return options

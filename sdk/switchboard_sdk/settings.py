"""How a client reaches NATS, read from the environment (prefix `SB_`) without extra libraries.

The services' settings extend this model (with pydantic-settings), so an agent, sbctl and every
service read the same variables with the same meaning.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, SecretStr, field_validator

from switchboard_sdk import names

ENV_PREFIX = "SB_"


class ConnectionSettings(BaseModel):
    nats_url: str = "nats://127.0.0.1:4222"
    env: str = "dev"

    # NATS authentication (all optional: unset means the open local setup). A process connects as
    # the user of its role (gateway, router, budget, recorder, hitl, operator for sbctl,
    # agent-<name> for an agent), or `nats_user` when set; the password comes from
    # `nats_password_file`, else `<nats_credentials_dir>/<user>`, else `nats_password`.
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_password_file: str | None = None
    nats_credentials_dir: str | None = None
    nats_tls_ca: str | None = None  # CA bundle that signed the server's certificate; enables TLS
    nats_tls_cert: str | None = None  # client certificate and key, when the server verifies clients
    nats_tls_key: str | None = None

    @field_validator("env")
    @classmethod
    def _env_is_a_name(cls, value: str) -> str:
        return names.check_env(value)

    @classmethod
    def from_env(cls) -> ConnectionSettings:
        """The settings from `SB_<FIELD>` variables (case-insensitive, like the services')."""
        environ = {key.upper(): value for key, value in os.environ.items()}
        return cls.model_validate(
            {name: environ[key] for name in cls.model_fields if (key := ENV_PREFIX + name.upper()) in environ}
        )

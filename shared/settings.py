"""Connection and process settings, read once from the environment (prefix `SB_`).

The NATS connection settings (URL, environment, credentials, TLS) are the SDK's
`ConnectionSettings`, so an agent and a service read the same variables. Each service subclasses
`Settings` to change its defaults (its HTTP port) or add its own keys; the object is built once
at start-up and passed down, never re-read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from switchboard_sdk.settings import ConnectionSettings


class Settings(BaseSettings, ConnectionSettings):
    model_config = SettingsConfigDict(env_prefix="SB_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/switchboard"
    config_dir: str = "config"
    http_host: str = "127.0.0.1"
    http_port: int = 0
    max_payload_bytes: int = 1_048_576
    max_inflight: int = 512
    redis_max_connections: int = 128
    request_timeout_s: float = 2.0
    drain_timeout_s: float = 20.0
    log_level: str = "INFO"

    # Redis AUTH (an ACL user, or the default user with a password) and PostgreSQL's password and
    # TLS mode, kept out of the URLs so that they can come from files (mounted secrets).
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_password_file: str | None = None
    database_password: SecretStr | None = None
    database_password_file: str | None = None
    database_sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] | None = None

    # What policy may name, fixed by the deployment: the environment variables a provider's key may
    # be read from, and the hosts a provider's base_url may point at (`*.example.com` matches
    # subdomains). Comma-separated in the environment. Policy naming anything else is rejected.
    provider_key_envs: Annotated[list[str], NoDecode] = [
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "SB_OPENAI_SIM_API_KEY",
        "SB_ANTHROPIC_SIM_API_KEY",
    ]
    provider_hosts: Annotated[list[str], NoDecode] = [
        "api.openai.com",
        "api.anthropic.com",
        "127.0.0.1",
        "localhost",
    ]

    @field_validator("provider_key_envs", "provider_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    def redis_options(self) -> dict:
        """Keyword arguments for the Redis client: the ACL user and password, when set."""
        options: dict = {}
        if self.redis_username:
            options["username"] = self.redis_username
        if (password := _secret(self.redis_password, self.redis_password_file)) is not None:
            options["password"] = password
        return options

    def database_options(self) -> dict:
        """Keyword arguments for asyncpg: the password and the TLS mode, when set."""
        options: dict = {}
        if (password := _secret(self.database_password, self.database_password_file)) is not None:
            options["password"] = password
        if self.database_sslmode:
            options["ssl"] = self.database_sslmode
        return options


def _secret(value: SecretStr | None, file: str | None) -> str | None:
    """A secret from its file (preferred: a mounted secret) or from the environment."""
    if file:
        return Path(file).read_text().strip()
    return value.get_secret_value() if value is not None else None

"""Connection and process settings, read once from the environment (prefix `SB_`).

Each service subclasses `Settings` to change its defaults (its HTTP port) or add its own
keys; the object is built once at start-up and passed down, never re-read.
"""

from __future__ import annotations

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared import names


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SB_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/switchboard"
    env: str = "dev"
    config_dir: str = "config"
    http_host: str = "127.0.0.1"
    http_port: int = 0
    max_payload_bytes: int = 1_048_576
    max_inflight: int = 512
    redis_max_connections: int = 128
    request_timeout_s: float = 2.0
    drain_timeout_s: float = 20.0
    log_level: str = "INFO"

    @field_validator("env")
    @classmethod
    def _env_is_a_name(cls, value: str) -> str:
        return names.check_env(value)

"""Service configuration, read from the environment once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; `WALLET_*` variables, plus the conventional `DATABASE_URL`."""

    model_config = SettingsConfigDict(env_prefix="WALLET_", extra="ignore")

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "WALLET_DATABASE_URL")
    )
    data_dir: Path = Path(".wallet")
    env: Literal["development", "test", "production"] = "development"

    pool_size: int = Field(default=8, ge=1, le=200)
    pool_timeout_s: float = Field(default=5.0, gt=0)
    lock_timeout_ms: int = Field(default=2000, ge=1)
    statement_timeout_ms: int = Field(default=15000, ge=1)

    idempotency_retention_hours: int = Field(default=24, ge=24)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)

    log_level: str = "INFO"
    log_json: bool = False

    graphiql: bool = True  # served only outside production
    cors_origins: str = ""  # comma-separated frontend origins allowed to call the API
    graphql_max_depth: int = Field(default=10, ge=2)
    graphql_max_tokens: int = Field(default=2000, ge=100)
    graphql_max_aliases: int = Field(default=20, ge=1)

    @property
    def graphiql_enabled(self) -> bool:
        return self.graphiql and self.env != "production"

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

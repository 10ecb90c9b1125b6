"""Service configuration, read from the environment once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; `WALLET_*` variables, plus the conventional `DATABASE_URL`."""

    model_config = SettingsConfigDict(env_prefix="WALLET_", extra="ignore")

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "WALLET_DATABASE_URL")
    )
    # The schema owner, for migrations and operator commands; defaults to DATABASE_URL.
    migrate_database_url: str | None = None
    # A hot standby for reads that may come from it (history, lookups, balances at an instant):
    # used once it has replayed every acknowledged write, else the primary (wallet/replica.py).
    database_read_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_READ_URL", "WALLET_DATABASE_READ_URL"),
    )
    replica_max_wait_ms: int = Field(default=10, ge=0)  # for the replica to catch up; then primary
    replica_retry_s: float = Field(default=5.0, gt=0)  # leave a failed replica alone this long
    data_dir: Path = Path(".wallet")
    env: Literal["development", "test", "production"] = "development"

    pool_size: int = Field(default=8, ge=1, le=200)
    pool_timeout_s: float = Field(default=5.0, gt=0)
    lock_timeout_ms: int = Field(default=2000, ge=1)
    statement_timeout_ms: int = Field(default=15000, ge=1)
    # Group commit (resources.GroupCommit): TOPUP, BONUS and SPEND make at most `calls` database
    # calls at once per worker; postings that arrive meanwhile wait and go together, at most
    # `max` in one transaction. WALLET_GROUP_COMMIT_MAX=1 posts each alone, as many at once as
    # the pool allows.
    group_commit_max: int = Field(default=32, ge=1, le=1000)
    group_commit_calls: int = Field(default=2, ge=1, le=200)

    idempotency_retention_hours: int = Field(default=24, ge=24)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_batch_bytes: int = Field(default=1024 * 1024, ge=1024)  # POST /api/wallet/batch's cap
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)  # request line and headers
    header_timeout_s: float = Field(default=10.0, gt=0)  # from the first byte to the last header
    body_timeout_s: float = Field(default=30.0, gt=0)  # from the last header to the body's end

    log_level: str = "INFO"
    log_json: bool = False

    jwt_secret: SecretStr | None = None  # HS256 end-user tokens
    jwt_public_key_file: Path | None = None  # PEM or JWKS: RS256 / ES256 end-user tokens
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    user_can_spend: bool = False  # may an end-user token SPEND from its own wallet?
    user_can_transfer: bool = False  # may an end-user token TRANSFER from its own wallet?
    auth_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    rate_limit_per_second: float = Field(default=0, ge=0)  # per principal and process; 0: off
    rate_limit_burst: int = Field(default=0, ge=0)  # 0: one second's worth

    graphiql: bool = True  # served only outside production
    cors_origins: str = ""  # comma-separated frontend origins allowed to call the API
    # Host names served (comma-separated; `*` for any, `*.example.com` for subdomains), besides
    # loopback. Unset: loopback only while the service is open, any once credentials exist.
    allowed_hosts: str = ""
    graphql_max_depth: int = Field(default=10, ge=2)
    graphql_max_tokens: int = Field(default=2000, ge=100)
    graphql_max_aliases: int = Field(default=20, ge=1)
    # Counted with every fragment expanded; GraphiQL's schema query selects 229 fields.
    graphql_max_fields: int = Field(default=300, ge=10)
    graphql_max_fragments: int = Field(default=50, ge=1)
    graphql_max_fragment_spreads: int = Field(default=100, ge=1)

    @property
    def jwt_configured(self) -> bool:
        return self.jwt_secret is not None or self.jwt_public_key_file is not None

    @property
    def owner_database_url(self) -> str | None:
        return self.migrate_database_url or self.database_url

    @property
    def graphiql_enabled(self) -> bool:
        return self.graphiql and self.env != "production"

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def allowed_host_list(self) -> list[str]:
        return [host.strip().lower() for host in self.allowed_hosts.split(",") if host.strip()]

"""Settings: one typed object built once from the environment (``REFERRAL_`` prefix) and passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service can be configured with; see ``docs/api/operator-guide.md``."""

    model_config = SettingsConfigDict(env_prefix="REFERRAL_", extra="ignore", frozen=True)

    database_url: str = "sqlite+aiosqlite:///var/referral.sqlite3"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Public base URL of this service: issuer of access tokens and audience of client assertions.
    public_url: str = "http://127.0.0.1:8080"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Largest request body accepted, in bytes (1000 items of a referral fit comfortably in 2 MiB).
    body_limit: int = Field(default=2 * 1024 * 1024, ge=1024)
    db_pool_size: int = Field(default=10, ge=1)
    db_pool_timeout: float = Field(default=5.0, gt=0)
    # Give up on a database statement after this many seconds so a stuck database fails requests fast.
    db_statement_timeout: float = Field(default=10.0, gt=0)
    # Refuse to start when the schema is behind the code; tests of that very check turn it off.
    check_schema: bool = True
    var_dir: Path = Path("var")
    # The service's own Ed25519 signing keys (tokens, receipts, checkpoints); created on first start, 0600.
    service_key_file: Path | None = None
    # Origin line of audit checkpoints (C2SP tlog-checkpoint) and the name of the note-signing key.
    audit_origin: str = "referral.localhost/audit"
    # The sequencer closes a batch at this many entries or after this many milliseconds (as Tessera does).
    audit_batch_size: int = Field(default=256, ge=1, le=10_000)
    audit_batch_interval_ms: int = Field(default=250, ge=1)
    # Run the background tasks (audit sequencer, ...) in the API process; off when `referral worker` does.
    run_background_tasks: bool = True
    # How often the referral clock looks for lapsed preservations.
    clock_interval_seconds: float = Field(default=30.0, gt=0)
    # Lifetime of the access tokens issued at /oauth/token (RFC 9068 JWTs).
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=86_400)
    # Client assertions (private_key_jwt) must expire within this many seconds of now; their jti is kept
    # that long to refuse replays.
    client_assertion_max_lifetime_seconds: int = Field(default=300, ge=10, le=3600)
    # Tolerated clock difference when checking exp, nbf and iat of assertions and tokens.
    clock_skew_seconds: int = Field(default=30, ge=0, le=300)
    # Failed client authentications tolerated per client id and per address within the window before 429.
    login_max_failures: int = Field(default=10, ge=1)
    login_failure_window_seconds: int = Field(default=300, ge=1)
    # Verified access tokens cached in memory, and how often a cached token's client is re-checked.
    access_token_cache_size: int = Field(default=10_000, ge=0)
    access_token_recheck_seconds: float = Field(default=30.0, ge=0)
    # Serve the statistics dashboard to anyone, without a login (aggregates only, small cells suppressed).
    public_dashboard: bool = False
    # Observers and the public see no count below this; smaller cells (and complements) are suppressed.
    stats_suppression_threshold: int = Field(default=5, ge=1, le=1000)

    @property
    def service_key_path(self) -> Path:
        """Where the service's signing keys are kept."""
        return self.service_key_file or self.var_dir / "service-keys.json"

    @property
    def is_sqlite(self) -> bool:
        """Whether the configured database is SQLite."""
        return self.database_url.startswith("sqlite")

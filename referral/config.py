"""Settings: one typed object built once from the environment (``REFERRAL_`` prefix) and passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
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
    # A request body must arrive within this many seconds (slow senders would otherwise hold a handler).
    body_read_timeout_seconds: float = Field(default=10.0, gt=0)
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
    # How often the referral clock looks for lapsed deadlines and preservations.
    clock_interval_seconds: float = Field(default=30.0, gt=0)
    # preservation.expiring is emitted this many days before a preservation lapses.
    preservation_warning_days: int = Field(default=7, ge=1, le=60)
    # Long-poll requests of the feed that one API client may hold open at once in one process.
    feed_max_waiting_per_client: int = Field(default=4, ge=1, le=1000)
    # Allow webhook URLs over plain http and to loopback or private addresses: local development and tests
    # only, never in production (it lets any party make the service call into its own network).
    webhook_allow_private: bool = False
    # Delays before each retry of a failed webhook delivery, in seconds: the Standard Webhooks schedule
    # (immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h). A delivery that fails them all is failed,
    # and disables its subscription.
    webhook_retry_delays: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    # Seconds to wait for a webhook endpoint's answer; a delivery in flight is leased for this plus a margin.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # How long a claimed delivery stays with its worker before another may send it again (if the first died
    # mid-attempt); longer than the timeout, so a slow answer is never overtaken by a second attempt.
    webhook_lease_seconds: float = Field(default=60.0, gt=0)
    # How often delivery workers look for due retries (new events wake them at once).
    webhook_poll_interval_seconds: float = Field(default=1.0, gt=0)
    # Deliveries one worker sends at the same time.
    webhook_concurrency: int = Field(default=16, ge=1, le=256)
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
    # Requests per second each API client (or anonymous address) may make to one route family, sustained,
    # and the burst allowed above it; 0 turns the limit off (benchmarks of the service itself).
    rate_limit_per_second: float = Field(default=100.0, ge=0)
    rate_limit_burst: int = Field(default=300, ge=1)
    # An Idempotency-Key claimed by a request that never finished (its process died) is free again after this.
    idempotency_claim_timeout_seconds: float = Field(default=60.0, gt=0)
    # Verified access tokens cached in memory, and how often a cached token's client is re-checked.
    access_token_cache_size: int = Field(default=10_000, ge=0)
    access_token_recheck_seconds: float = Field(default=30.0, ge=0)
    # Serve the statistics dashboard to anyone, without a login (aggregates only, small cells suppressed).
    public_dashboard: bool = False
    # Observers and the public see no count below this; smaller cells (and complements) are suppressed.
    stats_suppression_threshold: int = Field(default=5, ge=1, le=1000)

    @model_validator(mode="after")
    def _lease_outlasts_timeout(self) -> Settings:
        if self.webhook_lease_seconds <= self.webhook_timeout_seconds:
            raise ValueError("webhook_lease_seconds must be longer than webhook_timeout_seconds")
        return self

    @property
    def service_key_path(self) -> Path:
        """Where the service's signing keys are kept."""
        return self.service_key_file or self.var_dir / "service-keys.json"

    @property
    def is_sqlite(self) -> bool:
        """Whether the configured database is SQLite."""
        return self.database_url.startswith("sqlite")

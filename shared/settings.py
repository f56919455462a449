"""One place for configuration: every knob is a `DAYDREAM_*` environment variable (or `.env`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
SECRETS_DIR = Path("/run/secrets")
"""Where Docker mounts compose secrets: a file named like a setting (`openrouter_api_key`) sets it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DAYDREAM_", env_file=".env", extra="ignore", env_ignore_empty=True,
        secrets_dir=SECRETS_DIR if SECRETS_DIR.is_dir() else None,
    )
    """An empty value counts as unset: `.env.example` ships `OPENROUTER_API_KEY=`, and copying it
    must keep the demo on the fake LLM rather than call OpenRouter with an empty key. The secrets
    directory is only named where it exists, since pydantic-settings warns about a missing one."""

    data: Path = Path("data")
    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        validation_alias=AliasChoices("DAYDREAM_NATS_URL", "NATS_URL"),
    )
    database_url: str | None = None

    llm_base_url: str = OPENROUTER_BASE_URL
    llm_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DAYDREAM_LLM_API_KEY", "OPENROUTER_API_KEY"),
    )
    llm_simulated: bool = False
    """Set by the embedded stack when the base URL is its fake LLM: the endpoint is "simulated"."""
    llm_timeout_s: float = 180.0
    openrouter_app_url: str | None = None
    """Your project's URL, sent to OpenRouter only as `HTTP-Referer` (its app attribution); unset, none is sent."""
    max_attempts: int = 6
    retry_base_delay_s: float = 2.0
    retry_max_delay_s: float = 120.0
    evaluate_truncated: bool = True

    max_planned_calls: int = Field(default=100_000, ge=1)
    """`plan`, `publish` and `run` refuse an experiment that would make more LLM calls than this
    (generations + evaluations), counted before anything is built."""

    estimate_completion_tokens: int = Field(default=1024, ge=1)
    """Completion tokens the estimate assumes for a model with no `max_tokens` in llm_models.csv."""
    estimate_call_s: float = Field(default=10.0, ge=0)
    """Seconds the estimate assumes one call takes, for the time each tier's `max_concurrent` allows."""
    free_daily_requests: int = Field(default=50, ge=0)
    """OpenRouter's daily quota of `:free` model requests per account: 50, or 1000 once $10 of
    credits were bought (openrouter.ai/docs, Free Variant). `plan` and `run` warn above it."""
    confirm_calls: int = Field(default=1000, ge=0)
    confirm_cost_usd: float = Field(default=5.0, ge=0)
    """`run` asks before starting more LLM calls, or a larger estimated cost, than these (`--yes` skips)."""
    spend_bucket: str = "dd_spend"
    """The NATS KV bucket where the tracker puts each budgeted experiment's recorded spend."""

    ack_wait_s: float = 60.0
    heartbeat_s: float = 15.0
    duplicate_window_s: float = 3600.0
    slot_ack_wait_s: float = Field(default=10.0, gt=0)
    """A tier slot held by a worker that died comes back after this long (holders renew it)."""
    slot_heartbeat_s: float = Field(default=3.0, gt=0)
    circuit_after_connection_failures: int = Field(default=5, ge=1)
    """Consecutive calls of a tier that cannot reach the endpoint before the tier stops."""
    quota_horizon_s: float = Field(default=900.0, gt=0)
    """A 429 whose rate-limit reset lies further away than this is a used-up quota, not a cooldown."""
    events_max_age_days: float = 14.0
    response_store_bucket: str = "dd_responses"
    stream_replicas: int = Field(default=1, ge=1, le=5)
    """Copies JetStream keeps of every stream and bucket: 3 on a three-node cluster, so losing a
    node loses nothing and stalls nothing. Never lowers what an operator raised by hand."""

    tracker_lease_ttl_s: float = Field(default=8.0, gt=0)
    """A standby tracker takes over this long (plus a second) after the active one stopped renewing."""

    experiment_gauges_keep_s: float = Field(default=3600.0, ge=0)
    """How long a finished experiment keeps its `daydream_experiment_*` series on `/metrics`; after
    that only the tables remember it, so Prometheus's series count stays bounded."""

    fake_llm_latency_s: float = 0.0
    """Seconds each simulated call takes when `daydream run` starts the fake LLM (no API key)."""

    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    log_level: str = "INFO"

    @field_validator("llm_api_key", mode="before")
    @classmethod
    def _blank_key_is_no_key(cls, value: object) -> object:
        """Compose mounts an empty secret file when OPENROUTER_API_KEY is unset; that is no key."""
        return None if isinstance(value, str) and not value.strip() else value

    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data / 'daydream.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()

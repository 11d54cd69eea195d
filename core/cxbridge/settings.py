"""Process settings, read from ``CXBRIDGE_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from cxbridge.events import MAX_EVENT_BYTES

__all__ = ["Settings", "redact_url"]


class Settings(BaseSettings):
    """Settings of one cxbridge process. Tenant configuration lives in YAML files, not here."""

    model_config = SettingsConfigDict(env_prefix="CXBRIDGE_", env_file=".env", extra="ignore")

    config_dir: Path = Field(Path("examples/tenants"), description="Folder of tenant YAML files.")
    database_url: str = Field(
        "sqlite:///var/cxbridge.db", description="Store: sqlite:///PATH or postgresql://..."
    )
    broker_url: str = Field(
        "sqlite:///var/cxbridge-broker.db",
        description="Broker: sqlite:///PATH (embedded), redis://... or amqp://...",
    )
    queue_name: str = Field(
        "cxbridge",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Broker queue of the deliver actor; separate installations sharing a broker differ here.",
    )
    strict_plugins: bool = Field(False, description="A plugin that fails to load is fatal.")
    plugins_allow: Annotated[list[str] | None, NoDecode] = Field(
        None, description="Comma-separated entry-point names; only these load."
    )
    plugins_deny: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated entry-point names that never load."
    )
    retention_days: int = Field(
        30, ge=1, description="Delivered and dead rows older than this are purged."
    )
    lease_seconds: float = Field(
        60,
        gt=0,
        description="How long a lease lasts unless renewed (running attempts renew it every third).",
    )
    lost_after: float = Field(
        60,
        gt=0,
        description="A message the broker no longer holds is sent again once it is this old.",
    )
    short_delay: float = Field(
        30,
        ge=0,
        description="Retry waits up to this go to the broker as a delay; longer ones wait in the store.",
    )
    log_format: str = Field("auto", pattern="^(auto|json|text)$")
    max_event_bytes: int = Field(
        MAX_EVENT_BYTES,
        ge=1024,
        description="Largest event accepted, in bytes of its JSON as received (a mapping: as stored).",
    )
    tenant_env_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated environment variables every tenant file may read, besides "
        "its own (named after the tenant: ACME_... for tenant acme).",
    )

    @classmethod
    def explicit(cls, **values: Any) -> Settings:
        """Settings from ``values`` and the defaults alone, validated: neither ``CXBRIDGE_*``
        environment variables nor a ``.env`` file are read (for embedding and tests)."""
        return _ExplicitSettings(**values)

    @field_validator("plugins_allow", "plugins_deny", "tenant_env_allow", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class _ExplicitSettings(Settings):
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def redact_url(url: str) -> str:
    """``scheme://user:***@host/...``: a URL fit for an error message or a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))

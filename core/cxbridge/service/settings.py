"""Settings of ``cxbridge serve``, on top of the process settings (same ``CXBRIDGE_*`` prefix)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from cxbridge.settings import Settings

__all__ = ["ServiceSettings"]


class ServiceSettings(Settings):
    """What the HTTP service adds to :class:`~cxbridge.settings.Settings`."""

    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token of the admin API for every tenant (unset: tenant keys only).",
    )
    max_body_bytes: int = Field(
        262_144, ge=1024, description="Largest request body the ingress reads; larger ones get 413."
    )
    rate_limit: float = Field(
        0, ge=0, description="Events per second each tenant may post (0: no limit); over it, 429."
    )
    rate_burst: int = Field(
        200, ge=1, description="Events a tenant may post at once above its rate limit."
    )
    copilot_failing_after: float = Field(
        300,
        gt=0,
        description="A delivery failing for this many seconds is pushed to Copilot panels.",
    )
    copilot_poll_interval: float = Field(
        0.25, gt=0, description="How often each server reads new dead letters and notices."
    )
    cursor_secret: SecretStr | None = Field(
        None,
        description="Signs Copilot cursors; set the same value on every server (unset: a random "
        "one per process, so cursors do not survive a restart).",
    )

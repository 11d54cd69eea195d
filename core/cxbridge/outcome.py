"""What a ``deliver`` hook returns, what ``transform`` produces, and what a delivery looks like to a plugin."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = ["Delivery", "Outcome", "OutcomeKind", "Payload"]


class OutcomeKind(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Outcome:
    """The result of one delivery attempt. Build one with :meth:`delivered`, :meth:`retry` or
    :meth:`permanent`.

    ``status_code`` and ``provider_code`` keep the destination's own answer for the attempt log
    (``503``, ``REQUEST_LIMIT_EXCEEDED``); ``remote_id`` is the id of what was written (a Salesforce
    record id, a Zendesk ticket id); ``response_excerpt`` is at most 16 KiB of the response body.
    """

    kind: OutcomeKind
    error: str | None = None
    retry_after: float | None = None
    status_code: int | None = None
    provider_code: str | None = None
    remote_id: str | None = None
    response_excerpt: str | None = None
    disable_destination: bool = False

    @classmethod
    def delivered(cls, **details: Any) -> Outcome:
        """The destination accepted the payload."""
        return cls(OutcomeKind.DELIVERED, **details)

    @classmethod
    def retry(cls, error: str, *, retry_after: float | None = None, **details: Any) -> Outcome:
        """A passing failure (5xx, timeout, rate limit). ``retry_after`` in seconds overrides backoff."""
        return cls(OutcomeKind.RETRY, error=error, retry_after=retry_after, **details)

    @classmethod
    def permanent(cls, error: str, *, disable_destination: bool = False, **details: Any) -> Outcome:
        """A failure that another attempt cannot fix (4xx, invalid data). Dead-letters the delivery.

        ``disable_destination`` (HTTP 410 Gone) also stops every later delivery to the destination until
        an operator enables it again.
        """
        return cls(
            OutcomeKind.PERMANENT, error=error, disable_destination=disable_destination, **details
        )

    @property
    def ok(self) -> bool:
        return self.kind is OutcomeKind.DELIVERED


@dataclass(frozen=True)
class Payload:
    """What ``transform`` renders once at fan-out and the store keeps; every retry sends these bytes.

    ``meta`` holds JSON-serialisable details the plugin needs to send it (a rendered URL, headers, the
    target object and operation) so that no template runs again at delivery time.
    """

    body: bytes
    content_type: str = "application/json"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    """One event on its way to one destination, as the ``deliver`` hook sees it.

    ``id`` is stable across attempts and replays: use it as the idempotency key at the destination.
    ``attempt`` counts from 1.
    """

    id: str
    tenant: str
    destination: str
    event_id: str
    event_type: str
    attempt: int
    payload: Payload
    first_attempt_at: datetime | None = None

"""Destination types (what a plugin registers) and destinations (what a tenant file configures)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from cxbridge.retry import RetryPolicy

if TYPE_CHECKING:
    from cxbridge.templating import Condition

__all__ = ["Destination", "DestinationType"]


@dataclass(frozen=True)
class DestinationType:
    """A kind of destination a plugin can deliver to, e.g. ``http`` or ``salesforce``.

    ``options`` is a pydantic model describing the destination's own keys in a tenant file; give it
    ``model_config = ConfigDict(extra="forbid")`` so that a misspelt key is an error at load time.
    ``plugin`` is filled in by the core with the name of the plugin that registered the type.
    ``ordering`` is the type's default for per-call order: ``"call"`` means the deliveries of one call
    to one destination are attempted one at a time, in the order the events occurred (what a CRM that
    finds-or-creates one record per call needs); ``None`` means no order. A destination's ``ordered:``
    key overrides it.
    """

    name: str
    options: type[BaseModel]
    description: str = ""
    plugin: str = ""
    ordering: Literal["call"] | None = None


@dataclass(frozen=True)
class Destination:
    """One configured destination of one tenant, validated at load time.

    ``options`` is an instance of the destination type's options model; ``when`` an optional Liquid
    condition that must be truthy for an event to be sent; ``retry`` the effective retry policy for each
    event type (``retry_for(event_type)``); ``ordered`` whether the deliveries of one call are attempted
    one at a time, in the order the events occurred.
    """

    tenant: str
    name: str
    type: str
    events: frozenset[str]
    options: Any
    timezone: str = "UTC"
    enabled: bool = True
    when: Condition | None = None
    retry: RetryPolicy | None = None
    retry_by_event: dict[str, RetryPolicy] = field(default_factory=dict)
    ordered: bool = False

    def accepts(self, event_type: str) -> bool:
        return event_type in self.events

    def retry_for(self, event_type: str) -> RetryPolicy:
        return self.retry_by_event.get(event_type) or self.retry or RetryPolicy()

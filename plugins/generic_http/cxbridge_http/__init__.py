"""cxbridge plugin: ``http`` destinations — any HTTP(S) endpoint, with Standard Webhooks signatures.

The payload (URL, body, templated headers) is rendered once in :func:`transform`; every attempt in
:func:`deliver` sends the same bytes, re-signed with a fresh ``webhook-timestamp``, through a pooled
client per destination that connects only to addresses the SSRF guard vetted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cxbridge import Delivery, Destination, Event, Outcome, Payload, hookimpl
from cxbridge_http.options import HttpOptions
from cxbridge_http.sender import Sender, render_payload

__all__ = [
    "TYPE",
    "HttpOptions",
    "close",
    "deliver",
    "register_destinations",
    "sender",
    "transform",
]

TYPE = "http"

# One per process: the pooled clients and OAuth tokens outlive single deliveries.
sender = Sender()


@hookimpl
def register_destinations(register: Callable[..., Any]) -> None:
    register(
        TYPE,
        HttpOptions,
        description="Any HTTP(S) endpoint; JSON or text body from Liquid templates, signed with "
        "Standard Webhooks headers (webhook-id / webhook-timestamp / webhook-signature)",
    )


@hookimpl
def transform(event: Event, destination: Destination) -> Payload | None:
    if destination.type != TYPE:
        return None
    return render_payload(event, destination)


@hookimpl
def deliver(delivery: Delivery, destination: Destination) -> Outcome | None:
    if destination.type != TYPE:
        return None
    return sender.deliver(delivery, destination)


@hookimpl
def shutdown() -> None:
    """Close every pooled connection and forget cached tokens."""
    sender.close()

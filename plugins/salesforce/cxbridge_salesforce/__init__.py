"""cxbridge plugin: writes contact-center AI events into Salesforce (Tasks, Cases), REST API.

Destination type ``salesforce``; its options are :class:`SalesforceOptions`. ``transform``
renders a write plan once (which records, which fields, which lookups); ``deliver`` carries it
out with idempotent upserts on external-id fields, so retries and out-of-order events never
duplicate records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from cxbridge import Delivery, Destination, Event, Outcome, Payload, hookimpl
from cxbridge_salesforce.client import client_for, reset_clients
from cxbridge_salesforce.mapping import WritePlan, build_plan
from cxbridge_salesforce.options import (
    AccessTokenAuth,
    ClientCredentialsAuth,
    JwtBearerAuth,
    MappingOverride,
    PasswordAuth,
    SalesforceOptions,
    SoapLoginAuth,
)
from cxbridge_salesforce.writer import execute

__all__ = [
    "AccessTokenAuth",
    "ClientCredentialsAuth",
    "JwtBearerAuth",
    "MappingOverride",
    "PasswordAuth",
    "SalesforceOptions",
    "SoapLoginAuth",
    "WritePlan",
    "build_plan",
    "deliver",
    "register_destinations",
    "reset_clients",
    "shutdown",
    "transform",
]

TYPE = "salesforce"


@hookimpl
def register_destinations(register: Callable[..., None]) -> None:
    register(
        TYPE,
        SalesforceOptions,
        description="Salesforce call Tasks, escalation Cases, follow-ups (upserts on external ids)",
        # The events of a call write the same records: one at a time, in order, they neither race
        # (upserts of create-only fields) nor update a Task before it exists.
        ordering="call",
    )


@hookimpl
def transform(event: Event, destination: Destination) -> Payload | None:
    if destination.type != TYPE:
        return None
    return build_plan(event, destination.options, destination.timezone).to_payload()


@hookimpl
def deliver(delivery: Delivery, destination: Destination) -> Outcome | None:
    if destination.type != TYPE:
        return None
    try:
        plan = WritePlan.from_payload(delivery.payload)
    except ValidationError as exc:
        return Outcome.permanent(
            "the stored payload is not a Salesforce write plan "
            f"({exc.error_count()} problems); re-render the delivery"
        )
    options: Any = destination.options
    client = client_for(destination.tenant, destination.name, options)
    return execute(plan, client)


@hookimpl
def shutdown() -> None:
    """Close every destination's HTTP sessions and forget their tokens."""
    reset_clients()

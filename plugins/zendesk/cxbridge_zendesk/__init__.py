"""cxbridge plugin: ``type: zendesk`` destinations — one Zendesk Support ticket per call.

Every event of a call finds its ticket by ``external_id`` (the call id) or creates it, then applies
its own change: ``call_create`` tags (and an optional Talk Partner Edition screen pop),
``call_outcome`` escalates or tags a sales lead, ``call_summary`` adds an internal summary comment,
``quality_score`` sets the score field and a pass/review tag. Any event twice, in any order, leaves
one ticket with one comment per delivery.

``transform`` renders a :class:`~cxbridge_zendesk.plan.TicketPlan` (JSON) once; ``deliver`` executes
it with zenpy, one attempt, mapping 429 / 5xx / timeouts to retries and other 4xx to permanent
failures.
"""

from __future__ import annotations

from pydantic import ValidationError

from cxbridge import Delivery, Destination, Event, Outcome, Payload, hookimpl
from cxbridge_zendesk.client import close_sessions, make_client
from cxbridge_zendesk.delivery import execute, outcome_for_exception
from cxbridge_zendesk.mapping import build_plan
from cxbridge_zendesk.options import ZendeskOptions
from cxbridge_zendesk.plan import CONTENT_TYPE, TicketPlan

__all__ = [
    "DESTINATION_TYPE",
    "ZendeskOptions",
    "deliver",
    "register_destinations",
    "shutdown",
    "transform",
]

DESTINATION_TYPE = "zendesk"


@hookimpl
def register_destinations(register) -> None:  # type: ignore[no-untyped-def]
    register(
        DESTINATION_TYPE,
        ZendeskOptions,
        description="Zendesk Support: one ticket per call (find-or-create by external_id)",
        # Find-or-create is not atomic in Zendesk: two events of one call at once would both miss
        # and both create. One at a time, in order, the first creates and the rest find.
        ordering="call",
    )


@hookimpl
def transform(event: Event, destination: Destination) -> Payload | None:
    if destination.type != DESTINATION_TYPE:
        return None
    plan = build_plan(event, destination.options, timezone=destination.timezone)
    return Payload(
        body=plan.to_bytes(),
        content_type=CONTENT_TYPE,
        meta={"external_id": plan.external_id, "event_type": plan.event_type},
    )


@hookimpl
def deliver(delivery: Delivery, destination: Destination) -> Outcome | None:
    if destination.type != DESTINATION_TYPE:
        return None
    try:
        plan = TicketPlan.model_validate_json(delivery.payload.body)
    except ValidationError as exc:
        return Outcome.permanent(
            f"the stored payload is not a Zendesk ticket plan ({exc.error_count()} problems: "
            f"{exc.errors()[0]['msg']}); re-render it from the event"
        )
    client = make_client(
        destination.options, tenant=destination.tenant, destination=destination.name
    )
    try:
        result = execute(client, plan, delivery.id)
    except Exception as exc:
        return outcome_for_exception(exc)
    return Outcome.delivered(
        remote_id=str(result.ticket_id),
        status_code=201 if result.created else 200,
        response_excerpt=result.excerpt(),
    )


@hookimpl
def shutdown() -> None:
    """Close the pooled connections of every Zendesk session."""
    close_sessions()

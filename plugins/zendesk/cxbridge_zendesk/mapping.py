"""From a CXMind event to a :class:`~cxbridge_zendesk.plan.TicketPlan`: the defaults, and template
overrides.

Defaults, per event type (every event finds or creates the ticket of its call, so order does not
matter):

- ``call_create``: tags ``voice``/``voice_<direction>``; a screen pop when the call's agent is
  mapped.
- ``call_outcome``: an escalation (signal ``escalation`` or an angry emotion) sets priority
  ``urgent`` and tag ``cxmind_escalation``; a sales signal tags ``sales_lead`` (and sets the
  configured group / assignee); each adds an internal note saying why.
- ``call_summary``: an internal comment with the summary, tags, action items and conclusions; tag
  ``cxmind_summary``.
- ``quality_score``: the score in the ``qa_score`` custom field; tag ``qa_pass`` or ``qa_review``.

A ticket created by any event gets the call's subject, a description of the call (or the event's
comment), the requester and the destination's ``tags``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cxbridge import (
    CallCreate,
    CallOutcome,
    CallSummary,
    Event,
    JsonTemplate,
    QualityScore,
    TemplateRenderError,
)
from cxbridge_zendesk.options import EventMapping, ZendeskOptions
from cxbridge_zendesk.plan import CommentPlan, RequesterPlan, ScreenPopPlan, TicketPlan

__all__ = ["build_plan", "normalize_tag"]


def normalize_tag(tag: str) -> str:
    """Zendesk tags are lower case without spaces."""
    return re.sub(r"\s+", "_", str(tag).strip()).lower()


def _tags(values: Any, where: str) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = values.replace(",", " ").split()
    if not isinstance(values, list):
        raise TemplateRenderError(f"{where}: expected a list of tags, got {type(values).__name__}")
    seen: dict[str, None] = {}
    for value in values:
        if value is None:
            continue
        tag = normalize_tag(value)
        if tag:
            seen[tag] = None
    return list(seen)


def _custom_fields(value: Any, options: ZendeskOptions, where: str) -> list[dict[str, Any]]:
    """``{name or id: value}`` or ``[{id, value}]`` -> Zendesk's ``[{id, value}]``."""
    items: list[tuple[Any, Any]]
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = []
        for entry in value:
            if not isinstance(entry, dict) or "id" not in entry:
                raise TemplateRenderError(f"{where}: each custom field needs an id and a value")
            items.append((entry["id"], entry.get("value")))
    else:
        raise TemplateRenderError(f"{where}: custom_fields must be a mapping of name to value")
    fields = []
    for key, field_value in items:
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            field_id = int(key)
        elif key in options.custom_fields:
            field_id = options.custom_fields[key]
        else:
            known = ", ".join(sorted(options.custom_fields)) or "none configured"
            raise TemplateRenderError(
                f"{where}: unknown custom field {key!r}; name it under custom_fields "
                f"(known: {known})"
            )
        fields.append({"id": field_id, "value": field_value})
    return fields


def _ticket_fields(value: Any, options: ZendeskOptions, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TemplateRenderError(f"{where}: expected a mapping of ticket fields")
    fields = dict(value)
    if "custom_fields" in fields:
        fields["custom_fields"] = _custom_fields(fields["custom_fields"], options, where)
    if "tags" in fields:
        fields["tags"] = _tags(fields["tags"], f"{where}.tags")
    if isinstance(fields.get("comment"), str):
        fields["comment"] = {"body": fields["comment"], "public": False}
    return {k: v for k, v in fields.items() if v is not None}


def _comment(value: Any, where: str) -> CommentPlan | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return CommentPlan(body=value)
    if isinstance(value, dict):
        if not value.get("body"):
            return None
        return CommentPlan(body=str(value["body"]), public=bool(value.get("public", False)))
    raise TemplateRenderError(f"{where}: expected a comment body or {{body, public}}")


# -- defaults
# ------------------------------------------------------------------------------------------


def _who(event: Event) -> str:
    customer = event.call.customer
    caller = (customer and (customer.name or customer.phone or customer.email)) or None
    if caller is None:
        caller = event.call.from_ if event.call.direction == "inbound" else event.call.to
    return caller or "unknown caller"


def _subject(event: Event) -> str:
    direction = event.call.direction
    if direction == "outbound":
        return f"Outbound call to {_who(event)}"
    if direction == "internal":
        return f"Internal call with {_who(event)}"
    return f"Inbound call from {_who(event)}"


def _description(event: Event, timezone: str) -> str:
    call = event.call
    lines = [f"CXMind call {call.id} ({call.direction})"]
    if call.from_ or call.to:
        lines.append(f"From {call.from_ or '?'} to {call.to or '?'}")
    if call.started_at:
        lines.append(f"Started {call.started_at.astimezone(ZoneInfo(timezone)):%Y-%m-%d %H:%M %Z}")
    if call.agent:
        agent = call.agent.name or call.agent.email or call.agent.id
        lines.append(f"Agent: {agent}")
    if call.queue:
        lines.append(f"Queue: {call.queue}")
    return "\n".join(lines)


def _requester(event: Event, options: ZendeskOptions) -> RequesterPlan | None:
    customer = event.call.customer
    phone = customer.phone if customer else None
    if phone is None and event.call.direction == "inbound":
        phone = event.call.from_
    name = customer.name if customer else None
    email = customer.email if customer else None
    if not (phone or email):
        return None
    if not name:
        name = options.default_requester_name.replace("{phone}", phone or email or "")
    return RequesterPlan(phone=phone, name=name, email=email)


def _screen_pop(event: CallCreate, options: ZendeskOptions) -> ScreenPopPlan | None:
    agent = event.call.agent
    if options.screen_pop == "off" or agent is None or not options.agents:
        return None
    lowered = {key.lower(): value for key, value in options.agents.items()}
    zendesk_agent = options.agents.get(agent.id)
    if zendesk_agent is None and agent.email:
        zendesk_agent = lowered.get(agent.email.lower())
    if zendesk_agent is None:
        return None
    started = event.call.answered_at or event.call.started_at or event.occurred_at
    return ScreenPopPlan(
        agent_id=zendesk_agent,
        target=options.screen_pop,
        not_after=started + timedelta(seconds=options.screen_pop_max_age),
    )


def _summary_body(event: CallSummary) -> str:
    ai = event.ai
    parts = ["CXMind call summary", "", ai.summary]
    if ai.tags:
        parts += ["", "Tags: " + ", ".join(ai.tags)]
    if ai.action_items:
        parts += ["", "Action items:"]
        for item in ai.action_items:
            extra = [f"owner: {item.owner}"] if item.owner else []
            if item.due_date:
                extra.append(f"due: {item.due_date.isoformat()}")
            parts.append(f"- {item.text}" + (f" ({', '.join(extra)})" if extra else ""))
    if ai.conclusions:
        parts += ["", "Conclusions:", *(f"- {c}" for c in ai.conclusions)]
    if ai.sentiment:
        parts += ["", f"Sentiment: {ai.sentiment}"]
    return "\n".join(parts)


def _default_sections(event: Event, options: ZendeskOptions) -> dict[str, Any]:
    """The default ``ticket``, ``tags``, ``remove_tags`` and ``comment`` of one event."""
    ticket: dict[str, Any] = {}
    tags: list[str] = []
    remove: list[str] = []
    comment: CommentPlan | None = None
    if isinstance(event, CallCreate):
        tags = ["voice", f"voice_{event.call.direction}"]
    elif isinstance(event, CallOutcome):
        ai = event.ai
        emotion = ai.emotion.label.lower() if ai.emotion else None
        esc, sales = options.escalation, options.sales
        escalate = ai.signal in esc.signals or (
            emotion is not None and emotion in {e.lower() for e in esc.emotions}
        )
        notes = []
        if escalate:
            ticket["priority"] = esc.priority
            tags.append(esc.tag)
            ticket.update(
                {
                    k: v
                    for k, v in (("group_id", esc.group_id), ("assignee_id", esc.assignee_id))
                    if v
                }
            )
            why = (
                f"signal {ai.signal}" if ai.signal in esc.signals else f"customer emotion {emotion}"
            )
            if ai.emotion and ai.emotion.score is not None:
                why += f" ({ai.emotion.score:.2f})"
            notes.append(f"CXMind escalation: {why}. Priority set to {esc.priority}.")
        if ai.signal in sales.signals:
            tags.append(sales.tag)
            for name, value in (("group_id", sales.group_id), ("assignee_id", sales.assignee_id)):
                if value and name not in ticket:
                    ticket[name] = value
            intents = ", ".join(i.name for i in ai.intents)
            notes.append(
                f"CXMind sales signal: {ai.signal}" + (f" (intents: {intents})" if intents else "")
            )
        if notes:
            comment = CommentPlan(body="\n".join(notes))
    elif isinstance(event, CallSummary):
        tags = ["cxmind_summary"]
        comment = CommentPlan(body=_summary_body(event))
    elif isinstance(event, QualityScore):
        quality = options.quality
        passed = (
            event.qi.passed
            if event.qi.passed is not None
            else event.qi.score >= quality.pass_threshold
        )
        tags = [quality.pass_tag if passed else quality.review_tag]
        remove = [quality.review_tag if passed else quality.pass_tag]
        field_id = options.custom_fields.get(quality.field)
        if field_id is not None:
            ticket["custom_fields"] = [{"id": field_id, "value": event.qi.score}]
    return {"ticket": ticket, "tags": tags, "remove_tags": remove, "comment": comment}


# -- the plan
# --------------------------------------------------------------------------------------------


def _render(template: JsonTemplate, context: dict[str, Any], timezone: str) -> Any:
    return template.render(context, timezone=timezone)


def build_plan(event: Event, options: ZendeskOptions, *, timezone: str = "UTC") -> TicketPlan:
    """The plan of one event for one destination: the defaults, with its overrides applied."""
    overrides: EventMapping | None = options.mappings.get(event.type)
    needs_context = options.external_id is not None or overrides is not None
    context = event.template_context(timezone=timezone) if needs_context else {}
    where = f"mappings.{event.type}"

    external_id = event.call.id
    if options.external_id is not None:
        external_id = str(_render(options.external_id, context, timezone) or "").strip()
        if not external_id:
            raise TemplateRenderError("external_id rendered empty; it must identify the call")

    sections = _default_sections(event, options)
    requester = _requester(event, options)
    create: dict[str, Any] = {"subject": _subject(event)}
    if overrides is not None:
        if overrides.ticket is not None:
            sections["ticket"] = _ticket_fields(
                _render(overrides.ticket, context, timezone), options, f"{where}.ticket"
            )
        if overrides.tags is not None:
            sections["tags"] = _tags(_render(overrides.tags, context, timezone), f"{where}.tags")
        if overrides.remove_tags is not None:
            sections["remove_tags"] = _tags(
                _render(overrides.remove_tags, context, timezone), f"{where}.remove_tags"
            )
        if overrides.comment is not None:
            sections["comment"] = _comment(
                _render(overrides.comment, context, timezone), f"{where}.comment"
            )
        if overrides.requester is not None:
            rendered = _render(overrides.requester, context, timezone)
            requester = RequesterPlan.model_validate(rendered) if rendered else None
        if overrides.create is not None:
            create = _ticket_fields(
                _render(overrides.create, context, timezone), options, f"{where}.create"
            )

    create.setdefault("comment", {"body": _description(event, timezone), "public": False})
    base_tags = [*options.tags, f"voice_{event.call.direction}"]
    create["tags"] = _tags([*base_tags, *create.get("tags", [])], "tags")
    return TicketPlan(
        event_type=event.type,
        external_id=external_id,
        requester=requester,
        create=create,
        ticket=sections["ticket"],
        add_tags=_tags(sections["tags"], "tags"),
        remove_tags=_tags(sections["remove_tags"], "remove_tags"),
        comment=sections["comment"],
        screen_pop=_screen_pop(event, options) if isinstance(event, CallCreate) else None,
    )

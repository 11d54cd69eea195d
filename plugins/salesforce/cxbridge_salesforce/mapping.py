"""From an event to a write plan: the Salesforce writes to make, rendered once at fan-out.

The plan is the stored payload (JSON), so every retry makes exactly the same writes. Anything that
must be read from Salesforce (the caller's Contact, whether the record exists yet) is described in
the plan and looked up at delivery time.

Built-in mappings (each overridable per tenant, see
:class:`~cxbridge_salesforce.options.MappingOverride`):

================  ================================================================================
call_create       the call's Task (TaskSubtype Call, CallType, Subject, WhoId; Status In Progress
                  only when it creates the Task), upserted on ``task_external_id_field`` = call id
call_outcome      escalation (signal ``escalation`` or an angry emotion): a Case (Priority High,
                  Origin Phone, ContactId), upserted on ``<call id>:escalation``; ``sales_lead``:
                  a follow-up Task upserted on ``<call id>:sales_lead``; other signals: nothing
call_summary      the call's Task: Description (summary + action items), CallDisposition,
                  CallDurationInSeconds, Status Completed
quality_score     the call's Task: ``qa_score_field``
================  ================================================================================

Every write to the call's Task upserts on the same external id and sends the fields that only a
new Task needs (TaskSubtype, which cannot be updated, Status In Progress, ...) as
``create_fields``; so events may arrive in any order and any number of times and still leave one
Task with the right fields.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from cxbridge import (
    CallCreate,
    CallOutcome,
    CallSummary,
    Event,
    JsonTemplate,
    Payload,
    QualityScore,
    TemplateRenderError,
)
from cxbridge_salesforce.options import MappingName, MappingOverride, SalesforceOptions

__all__ = ["PLAN_CONTENT_TYPE", "Lookup", "Write", "WritePlan", "build_plan"]

PLAN_CONTENT_TYPE = "application/vnd.cxbridge.salesforce-plan+json"
DESCRIPTION_LIMIT = 32_000
TEXT_LIMIT = 255
DIRECTION_CALL_TYPE = {"inbound": "Inbound", "outbound": "Outbound", "internal": "Internal"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Lookup(_Model):
    """A value found at delivery time: the Id of the Contact whose phone fields match ``phone``."""

    field: str
    kind: Literal["contact_by_phone"] = "contact_by_phone"
    phone: str
    when: Literal["always", "create"] = "always"


class Write(_Model):
    """One record write. ``fields`` are always sent; ``create_fields`` only when the record is new
    (``fields`` win on a clash); lookups fill a field at delivery time and are skipped when nothing
    matches or the field is already set."""

    name: str
    object: str
    operation: Literal["create", "update", "upsert"] = "upsert"
    external_id_field: str | None = None
    external_id: str | None = None
    fields: dict[str, Any] = Field(default_factory=dict)
    create_fields: dict[str, Any] = Field(default_factory=dict)
    lookups: list[Lookup] = Field(default_factory=list)


class WritePlan(_Model):
    version: Literal[1] = 1
    event_id: str
    event_type: str
    writes: list[Write] = Field(default_factory=list)

    def to_payload(self) -> Payload:
        body = json.dumps(self.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)
        meta = {"writes": [f"{w.operation} {w.object} {w.external_id or ''}" for w in self.writes]}
        return Payload(body=body.encode(), content_type=PLAN_CONTENT_TYPE, meta=meta)

    @classmethod
    def from_payload(cls, payload: Payload) -> WritePlan:
        return cls.model_validate_json(payload.body)


def build_plan(event: Event, options: SalesforceOptions, timezone: str = "UTC") -> WritePlan:
    """The writes ``event`` makes in the org described by ``options``."""
    plan = WritePlan(event_id=event.id, event_type=event.type)
    for name, default in _defaults(event, options, timezone):
        override = options.mappings.get(name)
        write = _apply_override(default, override, event, timezone) if override else default
        if write is not None:
            plan.writes.append(write)
    return plan


# -- built-in mappings ----------------------------------------------------------------------------


def _defaults(event: Event, options: SalesforceOptions, tz: str) -> list[tuple[MappingName, Write]]:
    if isinstance(event, CallCreate):
        write = _call_task(event, options, tz, name="call_create")
        # call_create owns these fields: they are set on update too (a Task made by a later event
        # that arrived first gets its proper subject and contact).
        for key in ("Subject", "CallType", "ActivityDate"):
            if key in write.create_fields:
                write.fields[key] = write.create_fields.pop(key)
        for lookup in write.lookups:
            lookup.when = "always"
        return [("call_create", write)]
    if isinstance(event, CallSummary):
        write = _call_task(event, options, tz, name="call_summary")
        write.fields.update(_summary_fields(event))
        return [("call_summary", write)]
    if isinstance(event, QualityScore):
        write = _call_task(event, options, tz, name="quality_score")
        write.fields[options.qa_score_field] = event.qi.score
        return [("quality_score", write)]
    if isinstance(event, CallOutcome):
        signal = _signal(event, options)
        if signal == "escalation":
            return [("escalation", _escalation_case(event, options))]
        if signal == "sales_lead":
            return [("sales_lead", _sales_task(event, options, tz))]
    return []


def _signal(event: CallOutcome, options: SalesforceOptions) -> str | None:
    signal = (event.ai.signal or "").strip().lower()
    if signal:
        return signal
    emotion = event.ai.emotion
    if emotion and emotion.label.strip().lower() in options.escalation_emotions:
        return "escalation"
    return None


def _phone(event: Event) -> str | None:
    customer = event.call.customer
    phone = customer.phone if customer else None
    if not phone:
        direction = event.call.direction
        phone = event.call.from_ if direction == "inbound" else event.call.to
    return phone.strip() if phone and phone.strip() else None


def _contact_lookup(
    event: Event, options: SalesforceOptions, field: str, when: Literal["always", "create"]
) -> list[Lookup]:
    phone = _phone(event)
    if not options.contact_lookup or phone is None:
        return []
    return [Lookup(field=field, phone=phone, when=when)]


def _local_date(moment: datetime, tz: str) -> str:
    return moment.astimezone(ZoneInfo(tz)).date().isoformat()


def _call_task(event: Event, options: SalesforceOptions, tz: str, *, name: str) -> Write:
    """The call's Task as any event of the call would create it."""
    call = event.call
    phone = _phone(event)
    if call.direction == "outbound":
        subject = f"Outbound call to {phone or 'unknown number'}"
    elif call.direction == "internal":
        subject = "Internal call"
    else:
        subject = f"Inbound call from {phone or 'unknown caller'}"
    create_fields: dict[str, Any] = {
        "Subject": subject[:TEXT_LIMIT],
        "TaskSubtype": "Call",
        "CallType": DIRECTION_CALL_TYPE[call.direction],
        "Status": "In Progress",
        "ActivityDate": _local_date(call.started_at or event.occurred_at, tz),
    }
    return Write(
        name=name,
        object="Task",
        operation="upsert",
        external_id_field=options.task_external_id_field,
        external_id=call.id,
        create_fields=create_fields,
        lookups=_contact_lookup(event, options, "WhoId", "create"),
    )


def _summary_fields(event: CallSummary) -> dict[str, Any]:
    ai = event.ai
    parts = [ai.summary.strip()]
    if ai.action_items:
        lines = []
        for item in ai.action_items:
            extra = ", ".join(
                x for x in (item.owner, item.due_date and f"due {item.due_date}") if x
            )
            lines.append(f"- {item.text}" + (f" ({extra})" if extra else ""))
        parts.append("Action items:\n" + "\n".join(lines))
    if ai.conclusions:
        parts.append("Conclusions:\n" + "\n".join(f"- {c}" for c in ai.conclusions))
    fields: dict[str, Any] = {
        "Description": "\n\n".join(parts)[:DESCRIPTION_LIMIT],
        "Status": "Completed",
    }
    disposition = "; ".join(ai.conclusions) or ai.sentiment or (ai.tags[0] if ai.tags else None)
    if disposition:
        fields["CallDisposition"] = disposition[:TEXT_LIMIT]
    duration = _duration(event)
    if duration is not None:
        fields["CallDurationInSeconds"] = duration
    return fields


def _duration(event: Event) -> int | None:
    call = event.call
    if call.duration_seconds is not None:
        return round(call.duration_seconds)
    start = call.answered_at or call.started_at
    if start and call.ended_at and call.ended_at >= start:
        return round((call.ended_at - start).total_seconds())
    return None


def _outcome_details(event: CallOutcome) -> str:
    ai = event.ai
    lines = [f"Call {event.call.id} ({event.call.direction})"]
    if event.call.agent:
        lines.append(f"Agent: {event.call.agent.name or event.call.agent.id}")
    if ai.signal:
        lines.append(f"Signal: {ai.signal}")
    if ai.emotion:
        emotion = ai.emotion
        score = f" ({emotion.score:.2f})" if emotion.score is not None else ""
        since = f", was {emotion.previous}" if emotion.previous else ""
        lines.append(f"Emotion: {emotion.label}{score}{since}")
    if ai.intents:
        lines.append("Intents: " + ", ".join(i.name for i in ai.intents))
    return "\n".join(lines)


def _escalation_case(event: CallOutcome, options: SalesforceOptions) -> Write:
    emotion = event.ai.emotion.label if event.ai.emotion else None
    reason = f"customer is {emotion}" if emotion else "escalation requested"
    return _outcome_write(
        event,
        options,
        name="escalation",
        object_name="Case",
        external_id_field=options.case_id_field,
        subject=f"Escalation on call {event.call.id}: {reason}",
        fields={"Priority": "High", "Origin": "Phone"},
        create_fields={"Status": "New"},
        contact_field="ContactId",
    )


def _sales_task(event: CallOutcome, options: SalesforceOptions, tz: str) -> Write:
    intents = ", ".join(i.name for i in event.ai.intents) or "sales interest"
    due = (event.occurred_at + timedelta(days=1)).astimezone(ZoneInfo(tz)).date().isoformat()
    return _outcome_write(
        event,
        options,
        name="sales_lead",
        object_name="Task",
        external_id_field=options.task_external_id_field,
        subject=f"Follow up sales lead from call {event.call.id}: {intents}",
        fields={"Priority": "Normal", "ActivityDate": due},
        create_fields={"Status": "Not Started", "TaskSubtype": "Task"},
        contact_field="WhoId",
    )


def _outcome_write(
    event: CallOutcome,
    options: SalesforceOptions,
    *,
    name: MappingName,
    object_name: str,
    external_id_field: str,
    subject: str,
    fields: dict[str, Any],
    create_fields: dict[str, Any],
    contact_field: str,
) -> Write:
    """The record a ``call_outcome`` opens, upserted on ``<call id>:<name>``: ``subject``, the
    outcome's details as Description, then ``fields``; the caller's Contact in ``contact_field``."""
    return Write(
        name=name,
        object=object_name,
        operation="upsert",
        external_id_field=external_id_field,
        external_id=f"{event.call.id}:{name}",
        fields={
            "Subject": subject[:TEXT_LIMIT],
            "Description": _outcome_details(event)[:DESCRIPTION_LIMIT],
            **fields,
        },
        create_fields=create_fields,
        lookups=_contact_lookup(event, options, contact_field, "always"),
    )


# -- overrides -------------------------------------------------------------------------------------


def _apply_override(
    default: Write, override: MappingOverride, event: Event, timezone: str
) -> Write | None:
    if not override.enabled:
        return None
    write = default.model_copy(deep=True)
    keep_defaults = override.default_fields
    if keep_defaults is None:
        keep_defaults = override.object is None or override.object == default.object
    if not keep_defaults:
        write.fields, write.create_fields, write.lookups = {}, {}, []
    if override.object:
        write.object = override.object
    if override.operation:
        write.operation = override.operation
    if override.external_id_field:
        write.external_id_field = override.external_id_field
    context = event.template_context(timezone=timezone)
    if override.external_id is not None:
        value = override.external_id.render(context, timezone=timezone)
        write.external_id = None if value is None else str(value)
    for attr in ("fields", "create_fields"):
        template: JsonTemplate | None = getattr(override, attr)
        if template is None:
            continue
        rendered = template.render(context, timezone=timezone)
        if not isinstance(rendered, dict):
            raise TemplateRenderError(f"mappings.{default.name}.{attr} must render to a mapping")
        getattr(write, attr).update(rendered)
    overridden = set(write.fields)
    write.lookups = [lk for lk in write.lookups if lk.field not in overridden]
    return write

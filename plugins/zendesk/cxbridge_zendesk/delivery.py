"""Executing a :class:`~cxbridge_zendesk.plan.TicketPlan` against Zendesk, and mapping failures to
outcomes.

One attempt, idempotent, whatever order the events of a call arrive in:

1. Find the call's ticket: ``GET /api/v2/tickets.json?external_id=...`` (the oldest when several).
2. None yet: resolve the requester (``users/search`` by phone, else ``users/create_or_update``,
   which finds the user by email, or a phone-only caller by the ``external_id``
   ``cxbridge-phone:<digits>`` given to the users created here, so two calls of one new caller at
   once make one user) and create the ticket with ``Idempotency-Key`` derived from the delivery
   id, so a retried create answers the first ticket. The event's comment, when it has one, is the ticket's first comment.
3. Found: one ``PUT`` with the event's fields, ``additional_tags`` / ``remove_tags`` and the
   comment, unless a comment of this delivery is already there (each comment ends with a ``cxbridge
   ref`` of the delivery).
4. Screen pop (``call_create`` with a mapped agent), best effort: its failure does not fail the
   delivery.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests

# zenpy ships no type information
from zenpy import Zenpy  # type: ignore[import-untyped]
from zenpy.lib.api_objects import Comment, Ticket, User  # type: ignore[import-untyped]
from zenpy.lib.exception import (  # type: ignore[import-untyped]
    APIException,
    RatelimitBudgetExceeded,
    ZenpyException,
)

from cxbridge import Outcome, guard_outcome, outcome_for_status
from cxbridge_zendesk.client import RateLimited, request_headers
from cxbridge_zendesk.plan import CommentPlan, RequesterPlan, TicketPlan

__all__ = ["Result", "delivery_ref", "execute", "find_ticket", "outcome_for_exception"]

log = logging.getLogger(__name__)
EXCERPT_LIMIT = 16 * 1024
REF_PREFIX = "cxbridge ref "
DUPLICATE_TAG = "cxbridge_duplicate"
CALLER_EXTERNAL_ID = "cxbridge-phone:"  # + the caller's digits: the external_id of a user we create


def delivery_ref(delivery_id: str) -> str:
    """A short stable reference of a delivery, for idempotency keys and comment markers."""
    return hashlib.sha256(delivery_id.encode()).hexdigest()[:24]


@dataclass
class Result:
    ticket_id: int
    created: bool
    comment: str = "none"  # "added", "already present" or "none"
    screen_pop: str | None = None

    def excerpt(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def find_ticket(client: Zenpy, external_id: str) -> Ticket | None:
    """The ticket whose ``external_id`` is exactly ``external_id`` (the oldest if several).

    zenpy puts the value into the query string as it is, so it is percent-encoded here (``&``,
    ``#``, spaces).
    """
    found = [
        t
        for t in client.tickets(external_id=quote(external_id, safe=""))
        if t.external_id == external_id
    ]
    return min(found, key=lambda t: int(t.id)) if found else None


def _comment_with_ref(comment: CommentPlan, ref: str) -> dict[str, Any]:
    return {"body": f"{comment.body}\n\n{REF_PREFIX}{ref}", "public": comment.public}


def _has_comment(client: Zenpy, ticket_id: int, ref: str) -> bool:
    marker = f"{REF_PREFIX}{ref}"
    return any(marker in (c.body or "") for c in client.tickets.comments(ticket_id))


def _requester_id(client: Zenpy, requester: RequesterPlan, ref: str) -> int:
    digits = re.sub(r"\D", "", requester.phone or "")
    if digits:
        users = list(client.users.search(query=f"phone:{digits}"))
        exact = [u for u in users if re.sub(r"\D", "", u.phone or "") == digits]
        if exact or users:
            return int(min(exact or users, key=lambda u: int(u.id)).id)
    user = User(name=requester.name or requester.phone or requester.email, role="end-user")
    if requester.phone:
        user.phone = requester.phone
    if requester.email:
        user.email = requester.email  # create_or_update finds an existing user by email
    elif digits:
        # ... and by external_id: two calls of one new caller at once (or a search index that
        # has not caught up yet) meet on one user instead of creating two.
        user.external_id = f"{CALLER_EXTERNAL_ID}{digits}"
    with request_headers({"Idempotency-Key": f"cxbridge-user-{ref}"}):
        created = client.users.create_or_update(user)
    return int(created.id)


def _merge_custom_fields(*groups: Any) -> list[dict[str, Any]]:
    merged: dict[int, dict[str, Any]] = {}
    for group in groups:
        for entry in group or []:
            merged[int(entry["id"])] = {"id": int(entry["id"]), "value": entry.get("value")}
    return list(merged.values())


def _create(client: Zenpy, plan: TicketPlan, ref: str) -> Ticket:
    fields: dict[str, Any] = {**plan.create, **plan.ticket}
    custom = _merge_custom_fields(
        plan.create.get("custom_fields"), plan.ticket.get("custom_fields")
    )
    if custom:
        fields["custom_fields"] = custom
    tags = dict.fromkeys(
        [*plan.create.get("tags", []), *plan.ticket.get("tags", []), *plan.add_tags]
    )
    for tag in plan.remove_tags:
        tags.pop(tag, None)
    fields["tags"] = list(tags)
    comment = dict(fields.pop("comment", None) or {})
    if plan.comment is not None:
        comment = _comment_with_ref(plan.comment, ref)
    elif comment:
        comment["body"] = f"{comment.get('body', '')}\n\n{REF_PREFIX}{ref}"
    fields["comment"] = Comment(**comment)
    if plan.requester is not None:
        fields["requester_id"] = _requester_id(client, plan.requester, ref)
    ticket = Ticket(external_id=plan.external_id, **fields)
    with request_headers({"Idempotency-Key": f"cxbridge-ticket-{ref}"}):
        audit = client.tickets.create(ticket)
    created: Ticket = getattr(audit, "ticket", audit)
    return created


def _update(client: Zenpy, plan: TicketPlan, ticket: Ticket, ref: str, result: Result) -> None:
    fields: dict[str, Any] = dict(plan.ticket)
    if plan.add_tags:
        fields["additional_tags"] = plan.add_tags
    if plan.remove_tags:
        fields["remove_tags"] = plan.remove_tags
    if plan.comment is not None:
        if _has_comment(client, int(ticket.id), ref):
            result.comment = "already present"
        else:
            fields["comment"] = Comment(**_comment_with_ref(plan.comment, ref))
            result.comment = "added"
    if fields:
        client.tickets.update(Ticket(id=ticket.id, **fields))


def _converge(
    client: Zenpy, plan: TicketPlan, ref: str, *, duplicate: Ticket, oldest: Ticket, result: Result
) -> Ticket:
    """Another delivery of the same call created its ticket at the same moment, and it is older.

    Apply this plan to that ticket too and mark ours as its duplicate, so every event of the call
    still meets on one ticket."""
    log.warning(
        "ticket %s duplicates ticket %s for external_id %r; converging on the older one",
        duplicate.id,
        oldest.id,
        plan.external_id,
    )
    result.ticket_id = int(oldest.id)
    result.created = False
    result.comment = "none"
    _update(client, plan, oldest, ref, result)
    note = Comment(
        body=f"Duplicate of ticket #{oldest.id} (same call, created concurrently); cxbridge "
        f"applied this event there.\n\n{REF_PREFIX}{ref}-duplicate",
        public=False,
    )
    client.tickets.update(Ticket(id=duplicate.id, additional_tags=[DUPLICATE_TAG], comment=note))
    return oldest


def _screen_pop(client: Zenpy, plan: TicketPlan, ticket: Ticket, now: datetime) -> str | None:
    pop = plan.screen_pop
    if pop is None:
        return None
    if pop.not_after is not None and now > pop.not_after:
        return "skipped: the call is too old for a screen pop"
    try:
        if pop.target == "user" and ticket.requester_id:
            client.talk_pe.display_user(pop.agent_id, int(ticket.requester_id))
            return f"user {ticket.requester_id} shown to agent {pop.agent_id}"
        client.talk_pe.display_ticket(pop.agent_id, int(ticket.id))
        return f"ticket {ticket.id} shown to agent {pop.agent_id}"
    except (
        Exception
    ) as exc:  # best effort: the ticket is written, a late or failed pop is no reason to retry
        outcome = outcome_for_exception(exc)
        log.warning("screen pop for agent %s failed: %s", pop.agent_id, outcome.error)
        return f"failed: {outcome.error}"


def execute(
    client: Zenpy, plan: TicketPlan, delivery_id: str, *, now: datetime | None = None
) -> Result:
    """Carry out ``plan`` once. Raises zenpy / requests / :class:`RateLimited` errors for
    :func:`outcome_for_exception` to classify."""
    ref = delivery_ref(delivery_id)
    ticket = find_ticket(client, plan.external_id)
    if ticket is None:
        ticket = _create(client, plan, ref)
        result = Result(int(ticket.id), created=True, comment="added" if plan.comment else "none")
        oldest = find_ticket(client, plan.external_id)
        if oldest is not None and int(oldest.id) < int(ticket.id):
            ticket = _converge(client, plan, ref, duplicate=ticket, oldest=oldest, result=result)
    else:
        result = Result(int(ticket.id), created=False)
        _update(client, plan, ticket, ref, result)
    result.screen_pop = _screen_pop(client, plan, ticket, now or datetime.now(UTC))
    return result


# -- failures
# -------------------------------------------------------------------------------------------


def _describe_error(response: requests.Response) -> tuple[str, str | None]:
    """A readable message from Zendesk's ``{"error", "description", "details"}``, and its code."""
    try:
        body = response.json()
    except ValueError:
        text = " ".join(response.text.split())[:200]
        return (f"HTTP {response.status_code}" + (f": {text}" if text else "")), None
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}", None
    error = body.get("error")
    code: str | None = None
    description = body.get("description")
    if isinstance(error, dict):  # e.g. {"error": {"title": "Forbidden", "message": "..."}}
        code = error.get("title")
        description = description or error.get("message")
    elif error is not None:
        code = str(error)
    parts = [f"HTTP {response.status_code}" + (f" {code}" if code else "")]
    if description:
        parts.append(str(description))
    details = body.get("details")
    if isinstance(details, dict):
        for field_name, problems in details.items():
            for problem in problems if isinstance(problems, list) else [problems]:
                described = problem.get("description") if isinstance(problem, dict) else problem
                parts.append(f"{field_name}: {described}")
    return "; ".join(parts), code


def _outcome_for_response(response: requests.Response) -> Outcome:
    status = response.status_code
    message, code = _describe_error(response)
    excerpt = response.text[:EXCERPT_LIMIT] if response.content else None
    if status == 409:  # a concurrent update of the same ticket: Zendesk asks to try again
        return Outcome.retry(
            message, status_code=status, provider_code=code, response_excerpt=excerpt
        )
    outcome = outcome_for_status(
        status,
        retry_after=response.headers.get("Retry-After"),
        excerpt=excerpt,
        provider_code=code,
    )
    return dataclasses.replace(outcome, error=f"Zendesk: {message}")


def outcome_for_exception(exc: BaseException) -> Outcome:
    """The outcome of an attempt that raised ``exc``. Unknown exceptions are re-raised (the engine
    records them with their traceback as retryable)."""
    if isinstance(exc, RateLimited):
        return Outcome.retry(
            f"Zendesk rate limit (HTTP 429); retry after {exc.retry_after} s",
            retry_after=exc.retry_after,
            status_code=429,
            provider_code="TooManyRequests",
            response_excerpt=exc.response.text[:EXCERPT_LIMIT] or None,
        )
    guarded = guard_outcome(exc)  # a refused address or redirect, a failed DNS lookup
    if guarded is not None:
        return guarded
    response = getattr(exc, "response", None)
    if isinstance(exc, APIException | requests.HTTPError) and response is not None:
        return _outcome_for_response(response)
    if isinstance(exc, requests.Timeout):
        return Outcome.retry(f"Zendesk did not answer in time: {type(exc).__name__}")
    if isinstance(exc, requests.ConnectionError):
        return Outcome.retry(f"could not connect to Zendesk: {type(exc).__name__}: {exc}")
    if isinstance(exc, requests.RequestException):  # RetryError, ChunkedEncodingError, ...
        return Outcome.retry(f"Zendesk request failed: {type(exc).__name__}: {exc}")
    if isinstance(exc, RatelimitBudgetExceeded):
        return Outcome.retry("Zendesk rate limit budget exceeded")
    if isinstance(exc, ZenpyException):  # e.g. an answer zenpy could not parse (a proxy's page)
        return Outcome.retry(f"unexpected answer from Zendesk: {exc}")
    raise exc

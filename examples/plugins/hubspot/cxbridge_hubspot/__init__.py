"""cxbridge destination type ``hubspot``: a call engagement per new call, a note per AI result.

Written as a third party would, from the cxbridge docs and ``cxbridge.__all__`` alone:

- ``call_create`` becomes a HubSpot *call* (``/crm/v3/objects/calls``); ``call_outcome``,
  ``call_summary`` and ``quality_score`` become *notes* (``/crm/v3/objects/notes``).
- HubSpot has no idempotency keys, so each record carries the delivery id in a custom property
  (``cxbridge_delivery_id``, created once in the portal) and ``deliver`` searches for it before
  creating: a retried or replayed delivery finds its record instead of writing a second one.
- HTTP answers map through ``cxbridge.outcome_for_status`` (429 honours ``Retry-After``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from cxbridge import (
    AllowNetworks,
    CallCreate,
    CallOutcome,
    CallSummary,
    Delivery,
    Destination,
    Event,
    GuardedTransport,
    NetworkPolicy,
    Outcome,
    Payload,
    QualityScore,
    RedirectRefused,
    guard_outcome,
    hookimpl,
    outcome_for_status,
)

TYPE = "hubspot"
ID_PROPERTY = "cxbridge_delivery_id"


class HubSpotOptions(BaseModel):
    """The keys of a ``type: hubspot`` destination."""

    model_config = ConfigDict(extra="forbid")

    access_token: SecretStr = Field(description="A private app's access token (crm.objects.*).")
    base_url: str = Field("https://api.hubapi.com", pattern=r"^https?://")
    owner_id: str | None = Field(None, description="hubspot_owner_id of the records written.")
    timeout: float = Field(15.0, gt=0, le=120, description="Seconds one request may take.")
    allow_networks: AllowNetworks  # only for a proxy or a test double on an internal network


def _properties(event: Event) -> tuple[str, dict[str, Any]]:
    """The HubSpot object and properties for one event."""
    call = event.call
    stamp = event.occurred_at.isoformat()
    if isinstance(event, CallCreate):
        return "calls", {
            "hs_timestamp": stamp,
            "hs_call_title": f"Call {call.external_id or call.id}",
            "hs_call_direction": "INBOUND" if call.direction == "inbound" else "OUTBOUND",
            "hs_call_from_number": call.from_ or "",
            "hs_call_to_number": call.to or "",
            "hs_call_status": "IN_PROGRESS",
        }
    if isinstance(event, CallSummary):
        body = event.ai.summary
    elif isinstance(event, CallOutcome):
        emotion = event.ai.emotion.label if event.ai.emotion else "none"
        body = f"AI signal: {event.ai.signal or 'none'}; emotion: {emotion}"
    elif isinstance(event, QualityScore):
        body = f"Quality score: {event.qi.score}"
    else:
        body = f"{event.type} for call {call.id}"
    return "notes", {"hs_timestamp": stamp, "hs_note_body": body}


@hookimpl
def register_destinations(register: Callable[..., Any]) -> None:
    register(TYPE, HubSpotOptions, description="HubSpot call engagements and notes")


@hookimpl
def transform(event: Event, destination: Destination) -> Payload | None:
    if destination.type != TYPE:
        return None
    obj, properties = _properties(event)
    if destination.options.owner_id:
        properties["hubspot_owner_id"] = destination.options.owner_id
    return Payload(json.dumps({"properties": properties}).encode(), meta={"object": obj})


_clients: dict[tuple[str, str], httpx.Client] = {}
_lock = threading.Lock()


def _http(destination: Destination) -> httpx.Client:
    """One pooled client per destination for every worker thread (httpx.Client is thread-safe),
    each connection through cxbridge's outbound guard, redirects never followed."""
    key = (destination.tenant, destination.name)
    with _lock:
        if key not in _clients:
            policy = NetworkPolicy.from_cidrs(destination.options.allow_networks)
            _clients[key] = httpx.Client(
                transport=GuardedTransport(policy), follow_redirects=False, trust_env=False
            )
        return _clients[key]


@hookimpl
def deliver(delivery: Delivery, destination: Destination) -> Outcome | None:
    if destination.type != TYPE:
        return None
    options: HubSpotOptions = destination.options
    obj = delivery.payload.meta.get("object", "notes")
    url = f"{options.base_url.rstrip('/')}/crm/v3/objects/{obj}"
    headers = {"Authorization": f"Bearer {options.access_token.get_secret_value()}"}
    search = {
        "filterGroups": [
            {"filters": [{"propertyName": ID_PROPERTY, "operator": "EQ", "value": delivery.id}]}
        ],
        "limit": 1,
    }
    body = json.loads(delivery.payload.body)
    body["properties"][ID_PROPERTY] = delivery.id
    http = _http(destination)
    try:
        found = http.post(f"{url}/search", json=search, headers=headers, timeout=options.timeout)
        if found.status_code != 200:
            return _outcome(found)
        results = found.json().get("results") or []
        if results:  # written by an earlier attempt whose answer was lost
            return Outcome.delivered(status_code=200, remote_id=str(results[0]["id"]))
        created = http.post(url, json=body, headers=headers, timeout=options.timeout)
    except httpx.TransportError as exc:
        return Outcome.retry(f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # the guard: a refused address is permanent, a DNS failure retried
        outcome = guard_outcome(exc)
        if outcome is None:
            raise
        return outcome
    return _outcome(created)


def _outcome(response: httpx.Response) -> Outcome:
    if response.is_redirect:  # never followed
        refused = RedirectRefused(response.status_code, response.headers.get("Location"))
        return Outcome.permanent(str(refused), status_code=response.status_code)
    remote_id = None
    if response.is_success:
        remote_id = str(response.json().get("id") or "") or None
    return outcome_for_status(
        response.status_code,
        retry_after=response.headers.get("Retry-After"),
        excerpt=response.text[:2000],
        remote_id=remote_id,
    )


@hookimpl
def shutdown() -> None:
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()

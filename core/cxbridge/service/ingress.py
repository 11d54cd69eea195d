"""Ingress: ``POST /v1/events`` (one event) and ``POST /v1/events:batch`` (up to 100).

The tenant is the API key's; an event naming another tenant is refused with 403 (the key has no right
to it), and one naming none is taken as the key's. 202 means the event and its deliveries are stored
(durable); the same event id again answers 200 with ``duplicate: true`` and the same delivery ids.
A failing store answers 503 with ``Retry-After`` and stores nothing half-way.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from cxbridge.errors import CxbridgeError, EventValidationError
from cxbridge.events import parse_event
from cxbridge.service._http import (
    RETRY_AFTER_SECONDS,
    ApiError,
    authenticate,
    read_body,
    store_call,
    unavailable,
)

if TYPE_CHECKING:
    from cxbridge.service.runtime import Service

__all__ = ["BATCH_LIMIT", "post_batch", "post_event"]

BATCH_LIMIT = 100


async def post_event(request: Request) -> JSONResponse:
    """Accept one event.
    ---
    summary: Accept one event
    tags: [ingress]
    security: [{apiKey: []}]
    requestBody:
      required: true
      content: {application/json: {schema: {$ref: "#/components/schemas/Event"}}}
    responses:
      "202": {description: Stored; delivery ids returned, content: {application/json: {schema: {$ref: "#/components/schemas/Accepted"}}}}
      "200": {description: Duplicate event id; the first answer, content: {application/json: {schema: {$ref: "#/components/schemas/Accepted"}}}}
      "403": {description: The event names another tenant than the key's}
      "413": {description: Body larger than CXBRIDGE_MAX_BODY_BYTES}
      "422": {description: "Invalid event, with field paths", content: {application/json: {schema: {$ref: "#/components/schemas/Invalid"}}}}
      "429": {description: Tenant rate limit; see Retry-After}
      "503": {description: Store unavailable; see Retry-After}
    """
    service, tenant, body = await _admit(request, count=1)
    status, answer = await _accept(service, tenant, _json(body))
    if status == 503:
        raise unavailable(answer["error"])
    return JSONResponse(answer, status_code=status)


async def post_batch(request: Request) -> JSONResponse:
    """Accept up to 100 events, each with its own result.
    ---
    summary: Accept a batch of events
    tags: [ingress]
    security: [{apiKey: []}]
    requestBody:
      required: true
      content:
        application/json:
          schema: {type: array, maxItems: 100, items: {$ref: "#/components/schemas/Event"}}
    responses:
      "200": {description: "One result per event in order (status 202, 200, 403, 422 or 503 each)", content: {application/json: {schema: {$ref: "#/components/schemas/BatchResult"}}}}
      "413": {description: Body larger than CXBRIDGE_MAX_BODY_BYTES}
      "422": {description: Not a JSON array of at most 100 events}
      "429": {description: Tenant rate limit; see Retry-After}
      "503": {description: "The store failed for some event: the results say which were stored; retry the rest"}
    """
    service, tenant, body = await _admit(request, count=0)
    data = _json(body)
    if not isinstance(data, list) or len(data) > BATCH_LIMIT:
        raise ApiError(422, f"a batch is a JSON array of at most {BATCH_LIMIT} events")
    _limit(service, tenant, len(data))
    results = []
    for item in data:
        status, answer = await _accept(service, tenant, item)
        results.append({"status": status, **answer})
    failed = any(r["status"] == 503 for r in results)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if failed else None
    return JSONResponse({"results": results}, status_code=503 if failed else 200, headers=headers)


async def _admit(request: Request, *, count: int) -> tuple[Service, str, bytes]:
    """Authenticate, rate-limit (``count`` events) and read the capped body."""
    service: Service = request.app.state.service
    principal = authenticate(request, admin=False)
    assert principal.tenant is not None
    _limit(service, principal.tenant, count)
    return service, principal.tenant, await read_body(request, service.settings.max_body_bytes)


def _limit(service: Service, tenant: str, count: int) -> None:
    wait = service.limiter.take(tenant, count) if count else 0.0
    if wait:
        raise ApiError(
            429,
            f"tenant {tenant} is over its rate limit of {service.settings.rate_limit:g} events/s",
            headers={"Retry-After": str(math.ceil(wait))},
        )


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "body is not valid JSON", errors=[]) from None


async def _accept(service: Service, tenant: str, data: Any) -> tuple[int, dict[str, Any]]:
    """Validate and accept one event of ``tenant``: the status and the answer's fields."""
    if not isinstance(data, dict):
        return 422, _invalid([("(event)", "an event is a JSON object")])
    named = data.get("tenant", tenant)
    if named != tenant:
        return 403, {"error": "the API key's tenant may not post events of another tenant"}
    try:
        event = parse_event({**data, "tenant": tenant}, max_bytes=service.settings.max_event_bytes)
    except EventValidationError as exc:
        return 422, _invalid(exc.problems)
    try:
        accepted = await store_call(service.engine.accept, event)
    except ApiError as exc:
        return exc.status, {"error": exc.message, "event_id": event.id}
    except CxbridgeError as exc:  # a store failure reported as a cxbridge error
        return 503, {"error": exc.message, "event_id": event.id}
    if not accepted.duplicate:
        service.metrics.events_received.labels(event.type).inc()
    answer = {
        "event_id": accepted.event_id,
        "duplicate": accepted.duplicate,
        "delivery_ids": accepted.delivery_ids,
    }
    return (200 if accepted.duplicate else 202), answer


def _invalid(problems: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "error": "invalid event",
        "errors": [{"path": path, "message": message} for path, message in problems],
    }

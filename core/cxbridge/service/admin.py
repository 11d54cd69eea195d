"""The admin API under ``/v1/admin``: read events, deliveries, attempts and dead letters; replay;
disable and enable destinations; preview a payload; the configuration version and its reload.

The admin token (``CXBRIDGE_ADMIN_TOKEN``) sees every tenant; a tenant's API key sees only its own
tenant: naming another is refused with 403, and another tenant's delivery is "not found" (404).
Lists are pages in a stable order; ``next`` is the cursor of the following page (``null`` at the end).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from cxbridge.errors import ConfigError, CxbridgeError
from cxbridge.events import parse_event
from cxbridge.replay import replay as run_replay
from cxbridge.routing import render_payload
from cxbridge.service._http import (
    ApiError,
    authenticate,
    cxbridge_error,
    decode_page,
    encode_page,
    json_or_text,
    read_json,
    store_call,
)
from cxbridge.service.auth import Principal
from cxbridge.store import DEAD, DELIVERED, PENDING, DeliveryFilter, DeliveryRecord

if TYPE_CHECKING:
    from cxbridge.service.runtime import Service

__all__ = [
    "dead_letters",
    "delivery",
    "destination_state",
    "events",
    "list_deliveries",
    "preview",
    "reload",
    "replay_delivery",
    "replay_matching",
    "version",
]

STATUSES = (PENDING, DELIVERED, DEAD)


def _caller(request: Request) -> tuple[Service, Principal]:
    return request.app.state.service, authenticate(request, admin=True)


def _scope(principal: Principal, requested: str | None) -> str | None:
    """The tenant a query is limited to: the key's own, or what the admin asked for (``None``: all)."""
    if principal.tenant is None:
        return requested or None
    if requested and requested != principal.tenant:
        raise ApiError(403, "this API key may only read and change its own tenant")
    return principal.tenant


def _paging(request: Request, key_types: tuple[type, ...]) -> tuple[int, Any]:
    """``?limit=`` and the sort key decoded from ``?cursor=`` (``None`` on the first page)."""
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise ApiError(422, "limit must be an integer from 1 to 500")
    return int(raw), _key(decode_page(request.query_params.get("cursor")), key_types)


def _time(value: Any, name: str) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise ApiError(422, f"{name} must be an ISO 8601 time, e.g. 2026-12-01T00:00:00Z") from None
    if parsed.tzinfo is None:
        raise ApiError(422, f"{name} must carry a time zone, e.g. 2026-12-01T00:00:00Z")
    return parsed


def _filter(principal: Principal, params: Any, default_status: str | None) -> DeliveryFilter:
    status = params.get("status", default_status) or None
    if status is not None and status not in STATUSES:
        raise ApiError(422, f"status must be one of {', '.join(STATUSES)}")
    return DeliveryFilter(
        tenant=_scope(principal, params.get("tenant")),
        destination=params.get("destination") or None,
        event_type=params.get("event_type") or None,
        status=status,
        since=_time(params.get("since"), "since"),
        until=_time(params.get("until"), "until"),
    )


async def _own_delivery(service: Service, principal: Principal, delivery_id: str) -> DeliveryRecord:
    record = await store_call(service.engine.store.get_delivery, delivery_id)
    if record is None or not principal.sees(record.tenant):
        raise ApiError(404, f"no delivery {delivery_id}")
    return record


def _page(items: list[Any], limit: int, key: Any) -> str | None:
    return encode_page(key(items[-1])) if len(items) == limit else None


async def version(request: Request) -> JSONResponse:
    """Which tenant configuration this process runs.
    ---
    summary: Configuration version
    tags: [admin]
    security: [{bearer: []}]
    responses:
      "200": {description: "version: hash of the tenant files; tenants visible to the caller"}
    """
    service, principal = _caller(request)
    tenants = sorted(t for t in service.engine.tenants if principal.sees(t))
    return JSONResponse(
        {"version": service.version, "tenants": tenants, "workers": service.workers}
    )


async def reload(request: Request) -> JSONResponse:
    """Reload the tenant files (admin token only); on a problem the running configuration stays.
    ---
    summary: Reload tenant files
    tags: [admin]
    security: [{bearer: []}]
    responses:
      "200": {description: The new version}
      "403": {description: Not the admin token}
      "422": {description: "The files have problems (file:line:col: message); nothing changed"}
    """
    service, principal = _caller(request)
    if not principal.is_admin:
        raise ApiError(403, "only the admin token may reload the configuration")
    try:
        new_version = await store_call(service.reload)
    except ConfigError as exc:
        raise ApiError(
            422, "tenant files have problems", problems=[str(p) for p in exc.problems]
        ) from None
    return JSONResponse({"version": new_version})


async def events(request: Request) -> JSONResponse:
    """Events in arrival order.
    ---
    summary: List events
    tags: [admin]
    security: [{bearer: []}]
    parameters:
      - $ref: "#/components/parameters/tenant"
      - $ref: "#/components/parameters/cursor"
      - $ref: "#/components/parameters/limit"
    responses:
      "200": {$ref: "#/components/responses/Page"}
      "403": {$ref: "#/components/responses/OtherTenant"}
      "422": {$ref: "#/components/responses/BadParameter"}
    """
    service, principal = _caller(request)
    tenant = _scope(principal, request.query_params.get("tenant"))
    limit, after = _paging(request, (float, str, str))
    rows = await store_call(service.engine.store.events_page, tenant, after, limit)
    items = [
        {
            "tenant": r["tenant"],
            "id": r["id"],
            "type": r["type"],
            "received_at": r["received_at"],
            "event": json_or_text(bytes(r["body"])),
        }
        for r in rows
    ]
    nxt = _page(rows, limit, lambda r: [r["received_at"], r["tenant"], r["id"]])
    return JSONResponse({"items": items, "next": nxt})


async def list_deliveries(request: Request) -> JSONResponse:
    """Deliveries matching a filter, oldest first.
    ---
    summary: List deliveries
    tags: [admin]
    security: [{bearer: []}]
    parameters:
      - {name: tenant, in: query, schema: {type: string}}
      - {name: destination, in: query, schema: {type: string}}
      - {name: event_type, in: query, schema: {type: string}}
      - {name: status, in: query, schema: {type: string, enum: [pending, delivered, dead]}}
      - {name: since, in: query, schema: {type: string, format: date-time}}
      - {name: until, in: query, schema: {type: string, format: date-time}}
      - $ref: "#/components/parameters/cursor"
      - $ref: "#/components/parameters/limit"
    responses:
      "200": {$ref: "#/components/responses/Page"}
      "403": {$ref: "#/components/responses/OtherTenant"}
      "422": {$ref: "#/components/responses/BadParameter"}
    """
    service, principal = _caller(request)
    where = _filter(principal, request.query_params, None)
    limit, after = _paging(request, (float, str))
    records = await store_call(service.engine.store.deliveries_page, where, after, limit)
    nxt = _page(records, limit, lambda r: [r.created_at.timestamp(), r.id])
    return JSONResponse({"items": [r.as_dict() for r in records], "next": nxt})


async def delivery(request: Request) -> JSONResponse:
    """One delivery with its attempts (status, error, response excerpt) and dead letters.
    ---
    summary: One delivery and its attempts
    tags: [admin]
    security: [{bearer: []}]
    parameters:
      - $ref: "#/components/parameters/delivery_id"
    responses:
      "200": {description: "delivery, attempts, dead_letters"}
      "404": {$ref: "#/components/responses/NoDelivery"}
    """
    service, principal = _caller(request)
    record = await _own_delivery(service, principal, request.path_params["delivery_id"])
    store = service.engine.store
    attempts = await store_call(store.attempts_of, record.id)
    dead = await store_call(store.dead_letters_of, record.id)
    return JSONResponse({"delivery": record.as_dict(), "attempts": attempts, "dead_letters": dead})


async def dead_letters(request: Request) -> JSONResponse:
    """Dead letters with their reasons, oldest first.
    ---
    summary: List dead letters
    tags: [admin]
    security: [{bearer: []}]
    parameters:
      - $ref: "#/components/parameters/tenant"
      - $ref: "#/components/parameters/cursor"
      - $ref: "#/components/parameters/limit"
    responses:
      "200": {$ref: "#/components/responses/Page"}
      "403": {$ref: "#/components/responses/OtherTenant"}
      "422": {$ref: "#/components/responses/BadParameter"}
    """
    service, principal = _caller(request)
    tenant = _scope(principal, request.query_params.get("tenant"))
    limit, after = _paging(request, (int,))
    rows = await store_call(
        service.engine.store.dead_letters_page, tenant, after[0] if after else None, limit
    )
    return JSONResponse({"items": rows, "next": _page(rows, limit, lambda r: [r["id"]])})


async def replay_delivery(request: Request) -> JSONResponse:
    """Send one delivery again with a fresh retry window (``rerender``: render it again first).
    ---
    summary: Replay one delivery
    tags: [admin]
    security: [{bearer: []}]
    parameters:
      - $ref: "#/components/parameters/delivery_id"
    requestBody:
      content: {application/json: {schema: {type: object, properties: {rerender: {type: boolean}}}}}
    responses:
      "202": {description: "replayed: enqueued again (1 or 0); in_flight and pending: skipped, an attempt is running or scheduled"}
      "404": {$ref: "#/components/responses/NoDelivery"}
      "422": {description: Cannot re-render}
    """
    service, principal = _caller(request)
    record = await _own_delivery(service, principal, request.path_params["delivery_id"])
    body = await read_json(request)
    where = DeliveryFilter(tenant=record.tenant, status=None, ids=[record.id])
    return await _replay(service, where, rerender=_flag(body, "rerender"))


async def replay_matching(request: Request) -> JSONResponse:
    """Replay every delivery matching a filter (by default the dead ones); ``dry_run`` only counts.
    ---
    summary: Replay by filter
    tags: [admin]
    security: [{bearer: []}]
    requestBody:
      content:
        application/json:
          schema:
            type: object
            properties:
              tenant: {type: string}
              destination: {type: string}
              event_type: {type: string}
              status: {type: string, enum: [pending, delivered, dead]}
              since: {type: string, format: date-time}
              until: {type: string, format: date-time}
              rerender: {type: boolean}
              dry_run: {type: boolean}
    responses:
      "200": {description: "dry run: matched"}
      "202": {description: "replayed: how many were enqueued again; in_flight and pending: how many were skipped"}
      "403": {$ref: "#/components/responses/OtherTenant"}
      "422": {$ref: "#/components/responses/BadParameter"}
    """
    service, principal = _caller(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "the body is a JSON object of filters")
    where = _filter(principal, {k: v for k, v in body.items() if isinstance(v, str)}, DEAD)
    if _flag(body, "dry_run"):
        count = await store_call(service.engine.store.count_deliveries, where)
        return JSONResponse({"matched": count})
    return await _replay(service, where, rerender=_flag(body, "rerender"))


async def _replay(service: Service, where: DeliveryFilter, *, rerender: bool) -> JSONResponse:
    """202 with how many were enqueued again, and how many were skipped because an attempt is
    running (``in_flight``) or their next attempt is already scheduled (``pending``)."""
    try:
        result = await store_call(run_replay, service.engine, where, rerender=rerender)
    except CxbridgeError as exc:
        raise cxbridge_error(exc) from None
    return JSONResponse(
        {"replayed": result.replayed, "in_flight": result.in_flight, "pending": result.pending},
        status_code=202,
    )


async def destination_state(request: Request) -> JSONResponse:
    """Disable (deliveries are dead-lettered until enabled) or enable a destination.
    ---
    summary: Disable or enable a destination
    tags: [admin]
    security: [{bearer: []}]
    parameters:
      - {name: tenant, in: path, required: true, schema: {type: string}}
      - {name: destination, in: path, required: true, schema: {type: string}}
      - {name: action, in: path, required: true, schema: {type: string, enum: [disable, enable]}}
    requestBody:
      content: {application/json: {schema: {type: object, properties: {reason: {type: string}}}}}
    responses:
      "200": {description: "changed: false when it already was"}
      "403": {$ref: "#/components/responses/OtherTenant"}
      "404": {description: No such destination or action}
    """
    service, principal = _caller(request)
    tenant = _scope(principal, request.path_params["tenant"])
    name, action = request.path_params["destination"], request.path_params["action"]
    config = service.engine.tenants.get(tenant or "")
    if config is None or name not in config.destinations or action not in ("disable", "enable"):
        raise ApiError(404, f"no destination {name} of tenant {tenant} (or no action {action})")
    store = service.engine.store
    if action == "enable":
        changed = await store_call(store.enable_destination, config.name, name)
    else:
        body = await read_json(request)
        reason = body.get("reason") if isinstance(body, dict) else None
        reason = reason if isinstance(reason, str) and reason else "disabled by an operator"
        changed = await store_call(store.disable_destination, config.name, name, reason)
    return JSONResponse({"tenant": config.name, "destination": name, "changed": changed})


async def preview(request: Request) -> JSONResponse:
    """Render an event for a destination without sending it (as ``cxbridge render``).
    ---
    summary: Preview a payload
    tags: [admin]
    security: [{bearer: []}]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [destination, event]
            properties:
              tenant: {type: string}
              destination: {type: string}
              event: {$ref: "#/components/schemas/Event"}
    responses:
      "200": {description: "body, content_type, meta, subscribed (the destination takes this event type)"}
      "403": {$ref: "#/components/responses/OtherTenant"}
      "404": {description: No such destination}
      "422": {description: Invalid event or template error}
    """
    service, principal = _caller(request)
    body = await read_json(request, service.settings.max_body_bytes)
    if not isinstance(body, dict) or not isinstance(body.get("event"), dict):
        raise ApiError(422, "the body is {tenant?, destination, event}")
    tenant = _scope(principal, body.get("tenant") if isinstance(body.get("tenant"), str) else None)
    config = service.engine.tenants.get(tenant or "")
    name = body.get("destination")
    destination = config.destinations.get(name) if config and isinstance(name, str) else None
    if config is None or destination is None:
        raise ApiError(404, f"no destination {name!r} of tenant {tenant!r}")
    try:
        event = parse_event(
            {**body["event"], "tenant": config.name}, max_bytes=service.settings.max_event_bytes
        )
        payload = render_payload(service.engine.hooks, event, destination)
    except CxbridgeError as exc:
        raise cxbridge_error(exc) from None
    return JSONResponse(
        {
            "subscribed": destination.accepts(event.type),
            "content_type": payload.content_type,
            "meta": payload.meta,
            "body": json_or_text(payload.body),
        }
    )


def _flag(body: Any, name: str) -> bool:
    return isinstance(body, dict) and body.get(name) is True


def _key(value: list[Any] | None, types: tuple[type, ...]) -> Any:
    """A decoded page cursor checked against the sort key's types."""
    if value is None:
        return None
    if len(value) != len(types) or not all(
        isinstance(v, t) or (t is float and isinstance(v, int))
        for v, t in zip(value, types, strict=False)
    ):
        raise ApiError(422, "invalid page cursor")
    return tuple(value)

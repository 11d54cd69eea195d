"""The ASGI application: routes, the lifespan that runs the engine and the Copilot poller, error
answers, and the OpenAPI document at ``/openapi.json`` (built from the handlers' docstrings)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.schemas import SchemaGenerator

from cxbridge import __version__
from cxbridge.events import event_json_schema
from cxbridge.service import admin, ingress, metrics
from cxbridge.service._http import ApiError, api_error_response
from cxbridge.service.copilot import copilot_socket, poll_feed
from cxbridge.service.runtime import Service

__all__ = ["create_app", "openapi_document"]

ROUTES: list[BaseRoute] = [
    Route("/v1/events", ingress.post_event, methods=["POST"]),
    Route("/v1/events:batch", ingress.post_batch, methods=["POST"]),
    Route("/v1/admin/version", admin.version, methods=["GET"]),
    Route("/v1/admin/reload", admin.reload, methods=["POST"]),
    Route("/v1/admin/events", admin.events, methods=["GET"]),
    Route("/v1/admin/deliveries", admin.list_deliveries, methods=["GET"]),
    Route("/v1/admin/deliveries/{delivery_id}", admin.delivery, methods=["GET"]),
    Route("/v1/admin/deliveries/{delivery_id}/replay", admin.replay_delivery, methods=["POST"]),
    Route("/v1/admin/dead-letters", admin.dead_letters, methods=["GET"]),
    Route("/v1/admin/replay", admin.replay_matching, methods=["POST"]),
    Route(
        "/v1/admin/destinations/{tenant}/{destination}/{action}",
        admin.destination_state,
        methods=["POST"],
    ),
    Route("/v1/admin/preview", admin.preview, methods=["POST"]),
    WebSocketRoute("/v1/copilot", copilot_socket),
    Route("/metrics", metrics.metrics, methods=["GET"]),
    Route("/healthz", metrics.healthz, methods=["GET"]),
    Route("/readyz", metrics.readyz, methods=["GET"]),
]

_RESULT = {
    "type": "object",
    "properties": {
        "event_id": {"type": "string"},
        "duplicate": {"type": "boolean"},
        "delivery_ids": {"type": "array", "items": {"type": "string"}},
    },
}

_PARAMETERS = {
    "tenant": {"name": "tenant", "in": "query", "schema": {"type": "string"}},
    "cursor": {
        "name": "cursor",
        "in": "query",
        "schema": {"type": "string"},
        "description": "The `next` of the previous page",
    },
    "limit": {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
    },
    "delivery_id": {
        "name": "delivery_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    },
}
_RESPONSES = {
    "Page": {"description": "items, and next: the cursor of the following page (null at the end)"},
    "Unauthorized": {"description": "Missing or unknown key"},
    "OtherTenant": {"description": "A tenant key naming another tenant"},
    "BadParameter": {"description": "Bad parameter"},
    "NoDelivery": {"description": "No such delivery for this key"},
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of :data:`ROUTES`; the event schema is the ingress's own."""
    event = json.loads(
        json.dumps(event_json_schema()).replace('"#/$defs/', '"#/components/schemas/')
    )
    schemas: dict[str, Any] = event.pop("$defs", {})
    schemas["Event"] = event
    schemas["Accepted"] = _RESULT
    schemas["Invalid"] = {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    }
    schemas["BatchResult"] = {
        "type": "object",
        "properties": {"results": {"type": "array", "items": _RESULT}},
    }
    generator = SchemaGenerator(
        {
            "openapi": "3.1.0",
            "info": {"title": "cxbridge", "version": __version__},
            "components": {
                "schemas": schemas,
                "parameters": _PARAMETERS,
                "responses": _RESPONSES,
                "securitySchemes": {
                    "apiKey": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "A tenant API key",
                    },
                    "bearer": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "The admin token, or a tenant API key (its own tenant only)",
                    },
                },
            },
        }
    )
    document = generator.get_schema(ROUTES)
    for operations in document["paths"].values():
        for operation in operations.values():
            if operation.get("security"):  # every authenticated operation can answer 401
                operation["responses"]["401"] = {"$ref": "#/components/responses/Unauthorized"}
    return document


def create_app(service: Service) -> Starlette:
    """The application of one server process. Its lifespan starts the engine's workers (unless
    ``--no-workers``) and the Copilot poller, and on shutdown stops both and closes the engine."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(service.start)
        poller = asyncio.create_task(poll_feed(service))
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await asyncio.to_thread(service.close)

    document = openapi_document()

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(document)

    app = Starlette(
        routes=[*ROUTES, Route("/openapi.json", openapi, include_in_schema=False)],
        lifespan=lifespan,
        exception_handlers={ApiError: api_error_response},
    )
    app.state.service = service
    return app

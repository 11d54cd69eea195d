"""HTTP plumbing shared by the handlers: the error type and its JSON answer, the capped body reader,
page cursors, and the mapping of store failures to 503."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from cxbridge.errors import CxbridgeError
from cxbridge.service.auth import Principal, bearer_token

__all__ = [
    "RETRY_AFTER_SECONDS",
    "ApiError",
    "api_error_response",
    "authenticate",
    "cxbridge_error",
    "decode_page",
    "encode_page",
    "json_or_text",
    "read_body",
    "read_json",
    "store_call",
    "unavailable",
]

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 5
_T = TypeVar("_T")


class ApiError(Exception):
    """An answer other than success: status, a message a person can act on, and extra fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.fields = fields


def unavailable(message: str) -> ApiError:
    """503 with ``Retry-After``: the client should send the same request again later."""
    return ApiError(503, message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def api_error_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(
        {"error": exc.message, **exc.fields}, status_code=exc.status, headers=exc.headers
    )


async def store_call(func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run a blocking store call off the event loop; a failing database (a driver error, a full disk,
    a lost connection) becomes 503 + Retry-After: the request is refused, never acknowledged and
    then lost. (The ingress also maps the engine's own store errors, which are cxbridge errors.)"""
    try:
        return await run_in_threadpool(func, *args, **kwargs)
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        log.warning("store unavailable: %s", type(exc).__name__)
        raise unavailable("the store is unavailable; retry later") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (before reading, when announced)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body larger than {limit} bytes", limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body larger than {limit} bytes", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int = 65_536) -> Any:
    try:
        return json.loads(await read_body(request, limit) or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "body is not valid JSON") from None


def authenticate(request: Request, *, admin: bool) -> Principal:
    """The caller, from ``Authorization: Bearer``; 401 without a valid key."""
    keys = request.app.state.service.keys
    principal: Principal | None = keys.principal(bearer_token(request.headers), admin=admin)
    if principal is None:
        raise ApiError(
            401,
            "missing or unknown API key: send Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


def encode_page(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_page(cursor: str | None) -> list[Any] | None:
    """A page cursor back to its sort key (opaque to clients; scoping is by the query, not by it)."""
    if not cursor:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "invalid page cursor") from None
    if not isinstance(value, list):
        raise ApiError(422, "invalid page cursor")
    return value


def cxbridge_error(exc: CxbridgeError, status: int = 422) -> ApiError:
    """A cxbridge error as an answer, with the ids it carries."""
    context: dict[str, Any] = {
        name: value
        for name, value in (
            ("tenant", exc.tenant),
            ("destination", exc.destination),
            ("event_id", exc.event_id),
        )
        if value
    }
    return ApiError(status, exc.message, **context)


def json_or_text(body: bytes) -> Any:
    """A stored body as JSON when it is JSON, else as text."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", "replace")

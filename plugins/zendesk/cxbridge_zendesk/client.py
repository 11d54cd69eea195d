"""The zenpy client of a destination, and the requests session under it.

zenpy 2.0.57 is used for what it does well (URLs, objects, response parsing) and kept away from what
a delivery worker cannot afford:

- On 429 zenpy sleeps in a loop for as long as Zendesk keeps sending ``Retry-After``.
  :class:`ZendeskSession` raises :class:`RateLimited` on a 429 before zenpy sees the response, so
  the attempt ends at once and the engine schedules the next one after ``Retry-After``.
- Every connection goes through cxbridge's outbound guard (:class:`cxbridge.GuardedSession`:
  ``allow_networks``, the ``endpoint`` override), and redirects are never followed, on any method
  (:class:`cxbridge.RedirectRefused`): an API that moved is a configuration problem, and the
  target of a redirect would escape the guard.
- Extra headers for one request (``Idempotency-Key``) come from a context variable
  (:func:`request_headers`), so a session is never mutated per request.
- The object cache is off (``disable_cache=True``): it serves stale tickets and is not thread-safe.
- One session per thread and destination (connection reuse); a fresh, cheap ``Zenpy`` per attempt,
  because zenpy's API objects keep per-request state.

zenpy only parses a response whose request URL contains ``subdomain.domain``; the endpoint
override keeps that URL on the response, so it works with zenpy unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

import requests

# zenpy ships no type information
from zenpy import Zenpy  # type: ignore[import-untyped]
from zenpy import __version__ as zenpy_version

from cxbridge import GuardedSession, parse_retry_after
from cxbridge_zendesk.options import ZendeskOptions

__all__ = [
    "RateLimited",
    "ZendeskSession",
    "close_sessions",
    "make_client",
    "request_headers",
]

USER_AGENT = f"cxbridge-zendesk/0.1 zenpy/{zenpy_version}"

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_request_headers: ContextVar[Mapping[str, str]] = ContextVar(
    "cxbridge_zendesk_request_headers", default=_NO_HEADERS
)


class RateLimited(Exception):
    """Zendesk answered 429. ``retry_after`` is in seconds (``None`` when it did not say)."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self.retry_after = parse_retry_after(response.headers.get("Retry-After"))
        super().__init__(f"Zendesk rate limit (HTTP 429), retry after {self.retry_after} s")


@contextmanager
def request_headers(headers: Mapping[str, str]) -> Iterator[None]:
    """Add ``headers`` to every request this thread (context) sends inside the block."""
    token = _request_headers.set({**_request_headers.get(), **headers})
    try:
        yield
    finally:
        _request_headers.reset(token)


class ZendeskSession(GuardedSession):
    """The guarded session of one destination; it also ends an attempt on 429 instead of letting
    zenpy sleep and adds the headers of :func:`request_headers`."""

    def __init__(self, options: ZendeskOptions) -> None:
        super().__init__(options.policy, endpoint=options.endpoint)
        self.headers["User-Agent"] = USER_AGENT

    def request(
        self, method: str, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        extra = _request_headers.get()
        if extra:
            kwargs["headers"] = {**(kwargs.get("headers") or {}), **extra}
        response = super().request(method, url, *args, **kwargs)
        if response.status_code == 429:
            raise RateLimited(response)
        return response


_local = threading.local()
# Every session made, in any thread, so that close_sessions() can reach them all.
_made: list[ZendeskSession] = []
_made_lock = threading.Lock()


def _session(options: ZendeskOptions, key: tuple[Any, ...]) -> ZendeskSession:
    sessions: dict[tuple[Any, ...], ZendeskSession] = _local.__dict__.setdefault("sessions", {})
    session = sessions.get(key)
    if session is None:
        session = sessions[key] = ZendeskSession(options)
        with _made_lock:
            _made.append(session)
    return session


def close_sessions() -> None:
    """Close the pooled connections of every session; a session used again reconnects."""
    with _made_lock:
        made = list(_made)
        _made.clear()
    for session in made:
        session.close()


def make_client(options: ZendeskOptions, *, tenant: str = "", destination: str = "") -> Zenpy:
    """A zenpy client for one attempt, over this thread's session for the destination."""
    key = (
        tenant,
        destination,
        options.subdomain,
        options.domain,
        options.email,
        options.endpoint,
        tuple(map(str, options.allow_networks)),
    )
    credentials: dict[str, Any] = {}
    if options.oauth_token is not None:
        credentials["oauth_token"] = options.oauth_token.get_secret_value()
    elif options.api_token is not None:
        credentials["email"] = options.email
        credentials["token"] = options.api_token.get_secret_value()
    return Zenpy(
        subdomain=options.subdomain,
        domain=options.domain,
        session=_session(options, key),
        timeout=options.timeout,
        disable_cache=True,
        **credentials,
    )

"""Rendering a payload (once, at fan-out) and sending one attempt of it (re-signed every time)."""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from cxbridge import (
    AddressRefused,
    Delivery,
    Destination,
    Event,
    NetworkPolicy,
    Outcome,
    Payload,
    RedirectRefused,
    ResolutionFailed,
    TemplateRenderError,
    outcome_for_status,
    sign,
)
from cxbridge_http.auth import AuthFailed, TokenCache, secret_values, static_auth_header
from cxbridge_http.client import ClientCache, GuardedClient, SentResponse
from cxbridge_http.options import HttpOptions, OAuth2Auth, header_value_problem, is_template

__all__ = ["Sender", "render_payload"]

log = logging.getLogger("cxbridge_http")

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
REDACTED = "[redacted]"


def render_payload(event: Event, destination: Destination) -> Payload:
    """The payload of ``event`` for an ``http`` destination: body bytes, plus the rendered URL,
    method and templated headers in ``meta``. Raises
    :class:`~cxbridge.errors.TemplateRenderError`."""
    options: HttpOptions = destination.options
    tz = destination.timezone
    context = event.template_context(tz)

    def problem(message: str) -> TemplateRenderError:
        return TemplateRenderError(
            message, tenant=destination.tenant, destination=destination.name, event_id=event.id
        )

    url = options.url.render(context, timezone=tz).strip()
    # A light check only: the full parse (and the SSRF verdict on odd spellings of an address)
    # happens at delivery, so that allow_networks changes and replays see the current rules.
    try:
        parsed = urlsplit(url)
        has_host = bool(parsed.hostname)
    except ValueError:
        raise problem(f"url renders to an invalid URL: {url[:200]!r}") from None
    if parsed.scheme not in ("http", "https") or not has_host:
        raise problem(
            f"url must render to an http:// or https:// URL with a host, not {url[:200]!r}"
        )

    if options.body is not None:
        body = options.body.render_bytes(context, timezone=tz)
        content_type = options.content_type or JSON
    elif options.text_body is not None:
        body = options.text_body.render(context, timezone=tz).encode("utf-8")
        content_type = options.content_type or TEXT
    else:
        body = event.model_dump_json(by_alias=True).encode("utf-8")
        content_type = options.content_type or JSON

    # Only templated headers are stored: a static value (perhaps a ${SECRET}) is read from the
    # options at send time and never lands in the store.
    headers: dict[str, str] = {}
    for name, template in options.headers.items():
        if not is_template(template.source):
            continue
        value = template.render(context, timezone=tz).strip()
        reason = header_value_problem(value)
        if reason:
            raise problem(f"header {name} renders to a value that cannot be sent: {reason}")
        headers[name] = value
    meta: dict[str, Any] = {"url": url, "method": options.method, "headers": headers}
    return Payload(body=body, content_type=content_type, meta=meta)


def _redact(text: str | None, secrets: list[str]) -> str | None:
    if text is None:
        return None
    for value in secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def _scrub(outcome: Outcome, secrets: list[str]) -> Outcome:
    if not secrets:
        return outcome
    return replace(
        outcome,
        error=_redact(outcome.error, secrets),
        response_excerpt=_redact(outcome.response_excerpt, secrets),
        provider_code=_redact(outcome.provider_code, secrets),
        remote_id=_redact(outcome.remote_id, secrets),
    )


def _root_cause(exc: BaseException) -> BaseException:
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        nxt = seen.__cause__ or seen.__context__
        assert nxt is not None
        seen = nxt
    return seen


def _network_outcome(exc: httpx.HTTPError, host: str, options: HttpOptions) -> Outcome:
    """The outcome of a request that got no HTTP answer."""
    cause = _root_cause(exc)
    if isinstance(exc, httpx.ConnectTimeout):
        return Outcome.retry(
            f"connect timeout: no connection to {host} within {options.timeout.connect:g} s"
        )
    if isinstance(exc, httpx.TimeoutException):
        return Outcome.retry(f"timeout: {host} did not answer within {options.timeout.total:g} s")
    if isinstance(cause, ssl.SSLError):
        return Outcome.retry(f"TLS error with {host}: {cause}")
    if isinstance(cause, ConnectionRefusedError):
        return Outcome.retry(f"connection refused by {host}")
    if isinstance(exc, httpx.ConnectError):
        return Outcome.retry(f"cannot connect to {host}: {exc}")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return Outcome.permanent(f"cannot send this request: {exc}")
    return Outcome.retry(f"connection to {host} failed: {type(exc).__name__}: {exc}")


def _parse_url(url: str, options: HttpOptions) -> httpx.URL | Outcome:
    """The URL, or a permanent outcome for one httpx cannot send; an odd spelling of an internal
    address (``0177.0.0.1``) is named as the SSRF refusal it would be."""
    try:
        return httpx.URL(url)
    except httpx.InvalidURL as exc:
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            host = ""
        try:
            literal = NetworkPolicy.from_cidrs(options.allow_networks).check_literal(host)
        except AddressRefused as refused:
            return Outcome.permanent(str(refused))
        if literal is not None:
            return Outcome.permanent(f"invalid url: {exc}; write the address as {literal}")
        return Outcome.permanent(f"invalid url: {exc}")


class Sender:
    """Sends attempts; holds the pooled clients and the OAuth 2.0 tokens (one per process)."""

    def __init__(self) -> None:
        self.clients = ClientCache()
        self.tokens = TokenCache()

    def close(self) -> None:
        self.clients.close()
        self.tokens.clear()

    def deliver(self, delivery: Delivery, destination: Destination) -> Outcome:
        options: HttpOptions = destination.options
        secrets = secret_values(options)  # tokens used are appended while sending
        try:
            outcome = self._deliver(delivery, destination, options, secrets)
        except AuthFailed as exc:
            outcome = exc.outcome
        return _scrub(outcome, secrets)

    def _deliver(
        self,
        delivery: Delivery,
        destination: Destination,
        options: HttpOptions,
        secrets: list[str],
    ) -> Outcome:
        payload = delivery.payload
        url = payload.meta.get("url")
        if not isinstance(url, str):
            return Outcome.permanent(
                "the stored payload has no url; re-render it (replay --render)"
            )
        method = str(payload.meta.get("method") or options.method)
        target = _parse_url(url, options)
        if isinstance(target, Outcome):
            return target
        now = datetime.now(UTC)

        headers: dict[str, str] = {
            name: template.source
            for name, template in options.headers.items()
            if not is_template(template.source)
        }
        headers.update(payload.meta.get("headers") or {})
        for name, value in headers.items():  # a payload stored before this check existed
            reason = header_value_problem(value)
            if reason:
                return Outcome.permanent(f"header {name} cannot be sent: {reason}")
        headers["Content-Type"] = payload.content_type
        headers["X-CXMind-Event"] = delivery.event_type
        headers["X-CXMind-Attempt"] = str(delivery.attempt)
        headers["Idempotency-Key"] = delivery.id
        active = options.active_secrets(now)
        if options.secrets and not active:
            return Outcome.retry(
                "every signing secret of this destination has expired; add a new one to `secrets` "
                "(the delivery is retried)"
            )
        authorization = static_auth_header(options)
        if authorization:
            headers["Authorization"] = authorization

        client = self.clients.get(destination)
        token_key: tuple[str, ...] | None = None
        token: str | None = None
        if isinstance(options.auth, OAuth2Auth):
            token_key = TokenCache.key(destination.tenant, destination.name, options.auth)
            token = self.tokens.token(token_key, options.auth, client)
            secrets.append(token)
            headers["Authorization"] = f"Bearer {token}"

        outcome = self._send(
            client, method, target, payload.body, headers, delivery, active, options
        )
        if outcome.status_code == 401 and token_key is not None and token is not None:
            assert isinstance(options.auth, OAuth2Auth)
            log.info("401 from %s: refreshing the OAuth2 token once", destination.name)
            self.tokens.invalidate(token_key, token)
            token = self.tokens.token(token_key, options.auth, client)
            secrets.append(token)
            headers["Authorization"] = f"Bearer {token}"
            outcome = self._send(
                client, method, target, payload.body, headers, delivery, active, options
            )
        return outcome

    def _send(
        self,
        client: GuardedClient,
        method: str,
        url: httpx.URL,
        body: bytes,
        headers: dict[str, str],
        delivery: Delivery,
        secrets: list[str],
        options: HttpOptions,
    ) -> Outcome:
        # Signed per send: a fresh timestamp on every attempt, the same id.
        if secrets:
            headers.update(sign(body, msg_id=delivery.id, secrets=secrets))
        else:
            headers["webhook-id"] = delivery.id
            headers["webhook-timestamp"] = str(int(time.time()))
        host = url.host
        started = time.monotonic()
        deadline = started + options.timeout.total
        try:
            with client.send_direct(method, url, body, headers) as response:
                excerpt = self._excerpt(response, options.max_response_excerpt, deadline)
                status = response.status_code
        except AddressRefused as exc:
            return Outcome.permanent(str(exc))
        except ResolutionFailed as exc:
            return Outcome.retry(str(exc))
        except httpx.HTTPError as exc:
            return _network_outcome(exc, host, options)
        elapsed = time.monotonic() - started
        log.debug("%s %s -> %s in %.3f s", method, host, status, elapsed)
        if 300 <= status < 400:
            return Outcome.permanent(
                str(RedirectRefused(status, response.header("Location"))),
                status_code=status,
                response_excerpt=excerpt,
            )
        return outcome_for_status(
            status,
            retry_after=response.header("Retry-After"),
            excerpt=excerpt,
            reason=response.reason_phrase,
            origin=host,
        )

    @staticmethod
    def _excerpt(response: SentResponse, limit: int, deadline: float) -> str | None:
        """At most ``limit`` bytes of the body, read until the deadline; the rest is dropped."""
        if limit <= 0:
            return None
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_raw():
                chunks.append(chunk)
                size += len(chunk)
                if size >= limit or time.monotonic() > deadline:
                    break
        except httpx.HTTPError:
            pass  # the status line and headers arrived; a broken body does not change the outcome
        data = b"".join(chunks)[:limit]
        if not data:
            return None
        return data.decode("utf-8", errors="replace")

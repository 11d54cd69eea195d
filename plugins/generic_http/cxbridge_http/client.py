"""Pooled ``httpx`` clients, one per destination, each over cxbridge's outbound guard
(:class:`cxbridge.GuardedTransport`)."""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import certifi
import httpcore
import httpx

import cxbridge
from cxbridge import Destination, GuardedTransport, NetworkPolicy
from cxbridge_http.options import HttpOptions, MtlsAuth

__all__ = [
    "USER_AGENT",
    "ClientCache",
    "GuardedClient",
    "SentResponse",
    "build_client",
]

USER_AGENT = f"cxbridge/{cxbridge.__version__}"


def _ssl_context(options: HttpOptions) -> ssl.SSLContext:
    auth = options.auth
    if not isinstance(auth, MtlsAuth):
        return ssl.create_default_context(cafile=certifi.where())
    context = ssl.create_default_context(cafile=str(auth.ca_file or certifi.where()))
    password = auth.key_password.get_secret_value() if auth.key_password else None
    context.load_cert_chain(str(auth.cert_file), str(auth.key_file), password=password)
    return context


class SentResponse:
    """What :meth:`GuardedClient.send_direct` yields: the status line, the headers and the body
    stream of one response, from either path (the direct one or httpx's)."""

    __slots__ = ("_headers", "_reason", "_stream", "status_code")

    def __init__(
        self,
        status_code: int,
        headers: list[tuple[bytes, bytes]],
        reason: bytes | None,
        stream: Iterable[bytes],
    ) -> None:
        self.status_code = status_code
        self._headers = headers
        self._reason = reason
        self._stream = stream

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), decoded as httpx decodes it."""
        wanted = name.lower().encode("ascii")
        for key, value in self._headers:
            if key.lower() == wanted:
                try:
                    return value.decode("utf-8")
                except UnicodeDecodeError:
                    return value.decode("iso-8859-1")
        return None

    @property
    def reason_phrase(self) -> str:
        if self._reason is None:
            return httpx.codes.get_reason_phrase(self.status_code)
        return self._reason.decode("ascii", errors="ignore")

    def iter_raw(self) -> Iterator[bytes]:
        """The body as it arrives; network errors as ``httpx`` exceptions."""
        with GuardedTransport.httpx_errors():
            yield from self._stream


class GuardedClient(httpx.Client):
    """An ``httpx.Client`` over a :class:`GuardedTransport`, with a leaner path for deliveries.

    :meth:`send_direct` hands the request straight to the transport's connection pool (the same
    SSRF-guarded pool, the same bytes on the wire as :meth:`httpx.Client.stream`) without httpx's
    per-request ``Request``/``Response``/cookie machinery, which costs more CPU than the HTTP/1.1
    exchange itself. While the client holds cookies (a destination set one), it takes httpx's
    path, so cookies behave exactly as before.
    """

    def __init__(self, *, transport: GuardedTransport, **kwargs: Any) -> None:
        super().__init__(transport=transport, **kwargs)
        self.guarded = transport
        self._timeouts = self.timeout.as_dict()
        self._defaults = [(name.lower(), name, value) for name, value in self.headers.raw]

    def _wire_headers(
        self, method: str, url: httpx.URL, body: bytes, headers: Mapping[str, str]
    ) -> list[tuple[bytes, bytes]]:
        """The header list httpx would send: ``Host``, the client's defaults unless the request
        sets them (any case), the request's headers, then ``Content-Length``."""
        given = {name.lower() for name in headers}
        wire: list[tuple[bytes, bytes]] = []
        if "host" not in given:
            wire.append((b"Host", url.netloc))
        for lower, name, value in self._defaults:
            if lower.decode("ascii") not in given:
                wire.append((name, value))
        # ascii, as httpx encodes header strings (a non-ascii value raises as it did there).
        wire += [(name.encode("ascii"), value.encode("ascii")) for name, value in headers.items()]
        if "content-length" not in given and "transfer-encoding" not in given:
            if body:
                wire.append((b"Content-Length", str(len(body)).encode("ascii")))
            elif method in ("POST", "PUT", "PATCH"):
                wire.append((b"Content-Length", b"0"))
        return wire

    @contextlib.contextmanager
    def send_direct(
        self, method: str, url: httpx.URL, body: bytes, headers: Mapping[str, str]
    ) -> Iterator[SentResponse]:
        """Send one request and yield its response, streaming; closed when the block ends.
        Raises ``httpx.HTTPError`` subclasses (and the SSRF guard's errors) as ``stream`` does."""
        if self.cookies or url.scheme not in ("http", "https"):
            with self.stream(method, url, content=body, headers=dict(headers)) as response:
                yield SentResponse(
                    response.status_code,
                    response.headers.raw,
                    response.extensions.get("reason_phrase"),
                    response.iter_raw(),
                )
            return
        core_request = httpcore.Request(
            method=method.encode("ascii"),
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=self._wire_headers(method, url, body, headers),
            content=body,
            extensions={"timeout": self._timeouts},
        )
        with GuardedTransport.httpx_errors():
            core_response = self.guarded.pool.handle_request(core_request)
        try:
            if any(name.lower() == b"set-cookie" for name, _ in core_response.headers):
                self._keep_cookies(method, url, core_response)
            yield SentResponse(
                core_response.status,
                core_response.headers,
                core_response.extensions.get("reason_phrase"),
                core_response.iter_stream(),
            )
        finally:
            with GuardedTransport.httpx_errors():
                core_response.close()

    def _keep_cookies(self, method: str, url: httpx.URL, response: httpcore.Response) -> None:
        """Store the cookies a response sets, as httpx's client does (later sends then go
        through httpx, which sends them back)."""
        request = httpx.Request(method, url)
        self.cookies.extract_cookies(
            httpx.Response(response.status, headers=response.headers, request=request)
        )


def build_client(options: HttpOptions) -> GuardedClient:
    """A client for one destination: guarded, HTTP/1.1, no redirects, no proxies, no .netrc."""
    policy = NetworkPolicy.from_cidrs(options.allow_networks)
    timeout = options.timeout
    return GuardedClient(
        transport=GuardedTransport(policy, ssl_context=_ssl_context(options)),
        timeout=httpx.Timeout(
            connect=timeout.connect, read=timeout.total, write=timeout.total, pool=timeout.total
        ),
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
    )


def _file_stamp(options: HttpOptions) -> str:
    """mtimes of the mTLS files, so that a renewed certificate builds a new client."""
    if not isinstance(options.auth, MtlsAuth):
        return ""
    stamps = []
    for path in (options.auth.cert_file, options.auth.key_file, options.auth.ca_file):
        try:
            stamps.append(str(os.stat(path).st_mtime_ns) if path else "-")
        except OSError:
            stamps.append("?")
    return ",".join(stamps)


class ClientCache:
    """One pooled client per destination (tenant, name), rebuilt when its connection settings
    change.

    Thread-safe: worker threads share a client (httpx's sync client and httpcore's pool are).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], tuple[str, GuardedClient]] = {}

    def get(self, destination: Destination) -> GuardedClient:
        options: HttpOptions = destination.options
        key = (destination.tenant, destination.name)
        fingerprint = options.client_key() + _file_stamp(options)
        entry = self._clients.get(key)
        if entry is not None and entry[0] == fingerprint:
            return entry[1]
        with self._lock:
            entry = self._clients.get(key)
            if entry is not None and entry[0] == fingerprint:
                return entry[1]
            client = build_client(options)
            self._clients[key] = (fingerprint, client)
        if entry is not None:
            entry[1].close()  # the settings changed; a request still using it fails and is retried
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for _, client in clients:
            client.close()

    def __len__(self) -> int:
        return len(self._clients)

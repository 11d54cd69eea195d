"""Pooled ``httpx`` clients, one per destination, each behind the SSRF guard.

:class:`GuardedTransport` is an ``httpx`` transport over an ``httpcore.ConnectionPool`` whose
network backend is :class:`~cxbridge_http.ssrf.GuardedBackend`. Only public seams of httpx and
httpcore are used (``httpx.BaseTransport``, ``httpcore.ConnectionPool(network_backend=...)``).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
from collections.abc import Iterator

import certifi
import httpcore
import httpx

import cxbridge
from cxbridge.destinations import Destination
from cxbridge_http.options import HttpOptions, MtlsAuth
from cxbridge_http.ssrf import GuardedBackend, NetworkPolicy

__all__ = ["USER_AGENT", "ClientCache", "GuardedTransport", "build_client"]

USER_AGENT = f"cxbridge/{cxbridge.__version__}"

# Most specific first: the first match wins.
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """httpcore errors as their httpx counterparts (chained); anything else passes unchanged."""
    try:
        yield
    except Exception as exc:
        for source, target in _EXCEPTIONS:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: httpcore.Response) -> None:
        self._response = stream

    def __iter__(self) -> Iterator[bytes]:
        with _mapped():
            yield from self._response.iter_stream()

    def close(self) -> None:
        self._response.close()


class GuardedTransport(httpx.BaseTransport):
    """An HTTP/1.1 transport whose every TCP connection goes to an address the policy allows."""

    def __init__(
        self,
        policy: NetworkPolicy,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 64,
        max_keepalive_connections: int = 16,
        keepalive_expiry: float = 5.0,
    ) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context or ssl.create_default_context(cafile=certifi.where()),
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=GuardedBackend(policy),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _mapped():
            response = self._pool.handle_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


def _ssl_context(options: HttpOptions) -> ssl.SSLContext:
    auth = options.auth
    if not isinstance(auth, MtlsAuth):
        return ssl.create_default_context(cafile=certifi.where())
    context = ssl.create_default_context(cafile=str(auth.ca_file or certifi.where()))
    password = auth.key_password.get_secret_value() if auth.key_password else None
    context.load_cert_chain(str(auth.cert_file), str(auth.key_file), password=password)
    return context


def build_client(options: HttpOptions) -> httpx.Client:
    """A client for one destination: guarded, HTTP/1.1, no redirects, no proxies, no .netrc."""
    policy = NetworkPolicy.from_cidrs(options.allow_networks)
    timeout = options.timeout
    return httpx.Client(
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
        self._clients: dict[tuple[str, str], tuple[str, httpx.Client]] = {}

    def get(self, destination: Destination) -> httpx.Client:
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

"""The guard under ``httpx``: a transport whose every TCP connection goes to a vetted address.

:class:`GuardedBackend` is an ``httpcore`` network backend. ``httpcore`` hands its ``connect_tcp``
the host name of the request URL; the backend resolves it (one lookup), checks every answer with
:class:`~cxbridge.NetworkPolicy`, and opens the TCP connection to a vetted *address*, never to the
name again, so a DNS answer that changes between check and connect (DNS rebinding) cannot reach
anything that was not checked. TLS still runs over that socket with ``server_hostname`` = the
URL's host (``httpcore`` takes it from the request, not from the socket), so SNI and certificate
verification are for the name, and the ``Host`` header is the URL's.

Only public seams of httpx and httpcore are used (``httpx.BaseTransport``,
``httpcore.ConnectionPool(network_backend=...)``).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterable, Iterator
from typing import Any

import certifi
import httpcore
import httpx

from cxbridge.outbound._policy import NetworkPolicy, vetted_addresses

__all__ = ["GuardedBackend", "GuardedTransport"]

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


class GuardedBackend(httpcore.NetworkBackend):
    """A network backend that connects only to vetted addresses (see the module docstring)."""

    def __init__(self, policy: NetworkPolicy, inner: httpcore.NetworkBackend | None = None) -> None:
        self.policy = policy
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in vetted_addresses(host, port, self.policy):
            try:
                return self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.UnsupportedProtocol("unix sockets are not allowed for http destinations")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: httpcore.Response) -> None:
        self._response = stream

    def __iter__(self) -> Iterator[bytes]:
        with GuardedTransport.httpx_errors():
            yield from self._response.iter_stream()

    def close(self) -> None:
        self._response.close()


class GuardedTransport(httpx.BaseTransport):
    """An HTTP/1.1 ``httpx`` transport whose every TCP connection goes to an address ``policy``
    allows. Use it with ``httpx.Client(transport=..., follow_redirects=False, trust_env=False)``
    and treat a 3xx answer as :class:`~cxbridge.RedirectRefused`. ``pool`` is the underlying
    ``httpcore.ConnectionPool``, for callers that send through it directly (inside
    :meth:`httpx_errors`)."""

    def __init__(
        self,
        policy: NetworkPolicy,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 64,
        max_keepalive_connections: int = 16,
        keepalive_expiry: float = 5.0,
    ) -> None:
        self.pool = httpcore.ConnectionPool(
            ssl_context=ssl_context or ssl.create_default_context(cafile=certifi.where()),
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=GuardedBackend(policy),
        )

    @staticmethod
    @contextlib.contextmanager
    def httpx_errors() -> Iterator[None]:
        """httpcore errors as their httpx counterparts (chained); anything else (the guard's
        own errors) passes unchanged."""
        try:
            yield
        except Exception as exc:
            for source, target in _EXCEPTIONS:
                if isinstance(exc, source):
                    raise target(str(exc)) from exc
            raise

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
        with self.httpx_errors():
            response = self.pool.handle_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.pool.close()

"""The guard under ``requests`` (simple-salesforce, zenpy): a session whose every connection goes
to a vetted address and which never follows a redirect.

Imported on first use of :class:`~cxbridge.GuardedSession` (``requests`` is the optional extra
``cxbridge[requests]``). The guard sits in urllib3's connection classes: each new connection
resolves its host once, vets every answer with the :class:`~cxbridge.NetworkPolicy` and dials a
vetted address; TLS then runs with SNI and certificate checks for the URL's name, as urllib3 does
for any host. Plain ``http://`` connections go only to networks the policy names.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import create_connection

from cxbridge.errors import RedirectRefused
from cxbridge.outbound._policy import NetworkPolicy, vetted_addresses

__all__ = ["GuardedAdapter", "GuardedSession"]


def _dial(conn: HTTPConnection, policy: NetworkPolicy, *, cleartext: bool) -> socket.socket:
    """What urllib3's ``_new_conn`` does, but to vetted addresses only (its errors kept)."""
    last: OSError | None = None
    for address in vetted_addresses(conn.host, conn.port, policy, cleartext=cleartext):
        try:
            return create_connection(
                (str(address), conn.port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
            ) from exc
        except OSError as exc:
            last = exc
    raise NewConnectionError(conn, f"Failed to establish a new connection: {last}") from last


class _HTTPConnection(HTTPConnection):
    def __init__(self, *args: Any, policy: NetworkPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy = policy

    def _new_conn(self) -> socket.socket:
        return _dial(self, self.policy, cleartext=True)


class _HTTPSConnection(HTTPSConnection):
    def __init__(self, *args: Any, policy: NetworkPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy = policy

    def _new_conn(self) -> socket.socket:
        return _dial(self, self.policy, cleartext=False)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _PoolManager(urllib3.PoolManager):
    """Pools whose connections are guarded by ``policy``."""

    def __init__(self, policy: NetworkPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy
        self.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> HTTPConnectionPool:
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.conn_kw["policy"] = self.policy  # handed to every connection the pool makes
        return pool


class GuardedAdapter(HTTPAdapter):
    """A ``requests`` transport adapter: guarded connections, no proxies, no redirects (a
    redirect raises :class:`~cxbridge.RedirectRefused`), and a default ``(connect, read)``
    timeout for requests that give none."""

    def __init__(self, policy: NetworkPolicy, *, timeout: tuple[float, float] | None = None):
        self.policy = policy
        self.timeout = timeout
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        self.poolmanager = _PoolManager(
            self.policy, num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        response = super().send(
            request,
            stream=stream,
            timeout=timeout if timeout is not None else self.timeout,
            verify=verify,
            cert=cert,
            proxies=None,  # a proxy would dial the target itself, past the guard
        )
        if response.is_redirect:
            location = response.headers.get("Location")
            response.close()
            raise RedirectRefused(response.status_code, location)
        return response


class GuardedSession(requests.Session):
    """A ``requests.Session`` for one destination: every connection vetted by ``policy``, no
    redirects followed, no proxy or CA settings taken from the environment.

    ``endpoint`` (a destination's endpoint override, e.g. ``http://10.1.2.3:8080/sf``) sends
    every request there instead of to the host its library built the URL for: scheme, host and
    port are replaced, the endpoint's path is put before the request's. The original host travels
    in ``X-Forwarded-Host``, and the response keeps the URL the library asked for (libraries such
    as zenpy check it). Validate it at load with :meth:`NetworkPolicy.endpoint_problem`.
    """

    def __init__(
        self,
        policy: NetworkPolicy,
        *,
        timeout: tuple[float, float] | None = None,
        endpoint: str | None = None,
    ) -> None:
        super().__init__()
        self.trust_env = False
        adapter = GuardedAdapter(policy, timeout=timeout)
        self.mount("https://", adapter)
        self.mount("http://", adapter)
        self.endpoint = urlsplit(endpoint) if endpoint else None

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        asked = url.decode() if isinstance(url, bytes) else url
        if self.endpoint is None:
            return super().request(method, asked, *args, **kwargs)
        parts = urlsplit(asked)
        rebased = urlunsplit(
            (
                self.endpoint.scheme,
                self.endpoint.netloc,
                self.endpoint.path.rstrip("/") + parts.path,
                parts.query,
                parts.fragment,
            )
        )
        kwargs["headers"] = {**(kwargs.get("headers") or {}), "X-Forwarded-Host": parts.netloc}
        response = super().request(method, rebased, *args, **kwargs)
        response.url = asked
        response.request.url = asked
        return response

"""A programmable fake HTTP target on 127.0.0.1: records every request, answers as it is told.

::

    with FakeTarget() as target:
        target.reply("/hook", Reply(503, headers={"Retry-After": "7"}), Reply(200))  # in turn
        target.reply("/token", lambda req: Reply.json({"access_token": "t1", "expires_in": 3600}))
        ... post to target.url("/hook") ...
        assert target.requests[0].body == payload.body
        assert target.connections == 1  # keep-alive reused
        assert target.records() == 1    # writes, one per Idempotency-Key

It is ``http.server.ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive, so pooled clients reuse
connections and ``connections`` counts TCP accepts. ``Reply(delay=...)`` sleeps before answering
(read timeouts); ``Reply(drop=True)`` reads the request and closes the connection without an answer
(a lost response); ``FakeTarget(tls=context)`` serves HTTPS with a server-side ``ssl.SSLContext``;
``sni`` records the server name each TLS client asked for. Unmatched paths answer ``200 ok``.
``HttpSink`` is the same class under its older name.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["FakeTarget", "HttpSink", "Recorded", "Reply", "closed_port"]


@dataclass
class Reply:
    """One answer. ``close=True`` closes the connection after it (no keep-alive); ``drop=True``
    closes it instead of answering (after ``delay``)."""

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    close: bool = False
    drop: bool = False

    @classmethod
    def json(cls, data: Any, status: int = 200, **kwargs: Any) -> Reply:
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return cls(status, json.dumps(data).encode(), headers=headers, **kwargs)


@dataclass(frozen=True)
class Recorded:
    """One request the sink received. ``headers`` keeps order and duplicates; ``header()`` looks up
    case-insensitively."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    connection: int
    at: float

    def header(self, name: str, default: str | None = None) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default

    @property
    def header_map(self) -> dict[str, str]:
        return {key.lower(): value for key, value in self.headers}


Handler = Callable[[Recorded], Reply]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sink: FakeTarget

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up or fails the TLS handshake is what some tests do: keep it quiet.
        import sys

        self.sink.errors.append(repr(sys.exc_info()[1]))


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # one write per response (flushed by the base class): no Nagle stalls
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.sink._lock:
            self.server.sink.connections += 1
            self._connection_id = self.server.sink.connections

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        sink = self.server.sink
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        recorded = Recorded(
            method=self.command,
            path=split.path,
            query=split.query,
            headers=tuple(self.headers.items()),
            body=body,
            connection=self._connection_id,
            at=time.monotonic(),
        )
        with sink._lock:
            sink.requests.append(recorded)
        reply = sink._next_reply(recorded)
        if reply.delay:
            time.sleep(reply.delay)
        if reply.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if "content-type" not in {k.lower() for k in reply.headers}:
                self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(reply.body)))
            if reply.close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (read timeout tests)
        with sink._done:
            sink._done.notify_all()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class FakeTarget:
    """A recording HTTP(S) server on ``host`` (127.0.0.1) and a free port; a context manager."""

    def __init__(self, host: str = "127.0.0.1", *, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Recorded] = []
        self.connections = 0
        self.sni: list[str | None] = []
        self.errors: list[str] = []
        self._routes: dict[str, list[Reply] | Handler] = {}
        self._fault: Reply | None = None
        self._lock = threading.Lock()
        self._done = threading.Condition()
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, 0), _Handler)
        self._server.sink = self
        if tls is not None:
            tls.sni_callback = self._record_sni
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        address = self._server.server_address
        self.host: str = str(address[0])
        self.port: int = int(address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def _record_sni(self, sock: Any, name: str | None, context: Any) -> None:
        self.sni.append(name)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeTarget:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FakeTarget:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- programming -----------------------------------------------------------------------------

    def url(self, path: str = "/", host: str | None = None) -> str:
        """The URL of ``path``; ``host`` replaces the address (e.g. a name resolved by a test)."""
        name = host or self.host
        if ":" in name and not name.startswith("["):
            name = f"[{name}]"
        return f"{self.scheme}://{name}:{self.port}{path}"

    def reply(self, path: str, *replies: Reply | Handler) -> None:
        """Answer ``path`` (``"*"``: every path without its own replies) with ``replies`` in turn
        (the last one repeats), or with a handler function called per request."""
        if len(replies) == 1 and callable(replies[0]) and not isinstance(replies[0], Reply):
            self._routes[path] = replies[0]
        else:
            self._routes[path] = [r for r in replies if isinstance(r, Reply)]

    def fault(self, reply: Reply | None) -> None:
        """Answer every request with ``reply`` from now on, whatever the routes say (a scripted
        outage, a slow or a lost answer); ``None`` ends it."""
        with self._lock:
            self._fault = reply

    def _next_reply(self, request: Recorded) -> Reply:
        with self._lock:
            if self._fault is not None:
                return self._fault
            route = self._routes.get(request.path, self._routes.get("*"))
            if route is None:
                return Reply()
            if callable(route):
                handler = route
            else:
                return route.pop(0) if len(route) > 1 else route[0]
        return handler(request)

    # -- inspection ------------------------------------------------------------------------------

    def to(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def records(self, methods: tuple[str, ...] = ("POST", "PUT", "PATCH")) -> int:
        """How many records the writes would have made at an idempotent API: requests of
        ``methods`` answered 2xx-or-not, one per distinct ``Idempotency-Key`` header; a write
        without the header counts on its own."""
        keys: set[str] = set()
        count = 0
        with self._lock:
            for request in self.requests:
                if request.method not in methods:
                    continue
                key = request.header("Idempotency-Key")
                if key is None:
                    count += 1
                elif key not in keys:
                    keys.add(key)
                    count += 1
        return count

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        with self._done:
            while len(self.requests) < count and time.monotonic() < deadline:
                self._done.wait(deadline - time.monotonic())
        return list(self.requests)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.connections = 0


def closed_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` where nothing listens (bound, then closed): connecting is refused."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


HttpSink = FakeTarget

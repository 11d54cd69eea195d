"""What the fake servers share: a threaded HTTP server on 127.0.0.1 (any free port) in a daemon
thread, started and stopped with ``with``, whose request handlers reach the fake as ``self.fake``."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["FakeHandler", "FakeServer"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # bursts of concurrent clients must not hit SYN retransmits
    fake: Any

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and left is not a failure of the fake


class FakeHandler(BaseHTTPRequestHandler):
    """Base of a fake's request handler: quiet, with the fake at hand."""

    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def fake(self) -> Any:
        return self.server.fake


class FakeServer:
    """Base of a fake: subclasses name their ``handler`` class (a :class:`FakeHandler`)."""

    handler: type[FakeHandler]
    thread_name = "fake-server"
    poll_interval = 0.05

    _server: _Server | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Self:
        server = _Server(("127.0.0.1", 0), self.handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": self.poll_interval},
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start the fake first"
        return int(self._server.server_address[1])

    @property
    def netloc(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.netloc}"

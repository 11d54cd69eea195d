"""Shared by the benches: a fast HTTP sink (a minimal ASGI app under uvicorn, in its own process on
127.0.0.1), the sample event, and the bare ``httpx.Client`` posting loop the benches compare against.

Not a bench itself; ``bench/http.py`` and ``bench/engine.py`` import it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from typing import Any

import httpx

SINK = textwrap.dedent(
    """
    import sys, uvicorn

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"11")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False, http="h11")
    """
)

EVENT: dict[str, Any] = {
    "id": "evt-bench-1",
    "type": "call_summary",
    "occurredAt": "2026-01-01T10:00:00Z",
    "tenant": "acme",
    "call": {"id": "call-1", "externalId": "CX-1001", "direction": "inbound", "queue": "billing"},
    "ai": {
        "summary": "The customer asked for a refund of a duplicate charge; the agent agreed and "
        "opened a ticket. The customer was satisfied with the outcome and thanked the agent.",
        "tags": ["refund", "billing", "duplicate-charge"],
        "actionItems": [{"text": "Refund the duplicate charge", "owner": "billing"}],
        "conclusions": ["refund approved"],
        "sentiment": "positive",
    },
}

#: The ``body`` template of the benchmarked ``http`` destination (rendered from :data:`EVENT`).
BODY_TEMPLATE = {
    "id": "{{ event.id }}",
    "externalId": "{{ call.externalId }}",
    "summary": "{{ ai.summary }}",
    "tags": "{{ ai.tags }}",
    "actions": "{{ ai.actionItems }}",
    "sentiment": "{{ ai.sentiment }}",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_sink(port: int) -> subprocess.Popen[bytes]:
    """Start the uvicorn sink on 127.0.0.1:``port`` and wait until it accepts connections."""
    proc = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the uvicorn sink did not start")


def bare(url: str, body: bytes, n: int) -> float:
    """Requests/s of ``n`` sequential POSTs of ``body`` from one thread over one bare client."""
    headers = {"Content-Type": "application/json"}
    with httpx.Client() as client:
        client.post(url, content=body, headers=headers)  # warm the connection
        started = time.perf_counter()
        for _ in range(n):
            response = client.post(url, content=body, headers=headers)
            response.read()
            assert response.status_code == 200
        return n / (time.perf_counter() - started)

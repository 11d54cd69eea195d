"""Running the service for tests: two tenants' files pointing at an HttpSink, and the application on
uvicorn in a thread on a free 127.0.0.1 port (real sockets, real workers)."""

from __future__ import annotations

import contextlib
import socket
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from cxbridge.engine import Engine
from cxbridge.service import Service, ServiceSettings, create_app
from cxbridge.signing import generate_secret

SECRET = generate_secret()
KEYS = {"acme": "key-acme", "beta": "key-beta"}
ADMIN = "admin-token"

TENANT = """
tenant: {tenant}
api_keys: ["{key}", "{key}-rotated"]
destinations:
  hook:
    type: http
    events: ["*"]
    url: {sink}/hook/{tenant}
    secrets: ["{secret}"]
    allow_networks: ["127.0.0.0/8"]
  broken:
    type: http
    events: [call_summary]
    url: {sink}/broken/{tenant}
    allow_networks: ["127.0.0.0/8"]
"""


def write_tenants(directory: Path, sink_url: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for tenant, key in KEYS.items():
        text = TENANT.format(tenant=tenant, key=key, sink=sink_url.rstrip("/"), secret=SECRET)
        (directory / f"{tenant}.yaml").write_text(textwrap.dedent(text))
    return directory


def service_settings(tmp_path: Path, sink_url: str, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "config_dir": write_tenants(tmp_path / "tenants", sink_url),
        "database_url": f"sqlite:///{tmp_path / 'store.db'}",
        "broker_url": f"sqlite:///{tmp_path / 'broker.db'}",
        "admin_token": ADMIN,
        "cursor_secret": "test-cursor-secret",
        "copilot_poll_interval": 0.05,
        "lost_after": 5,
    }
    values.update(overrides)
    return ServiceSettings(**values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(
    settings: ServiceSettings, *, engine: Engine | None = None, workers: bool = True
) -> Iterator[tuple[str, Service]]:
    """The service on uvicorn in a thread; yields its base URL and the :class:`Service`."""
    service = Service(settings, engine=engine, workers=workers, threads=2)
    port = free_port()
    config = uvicorn.Config(
        create_app(service),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        ws="websockets-sansio",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", service
    finally:
        server.should_exit = True
        thread.join(30)


def auth(tenant_or_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS.get(tenant_or_token, tenant_or_token)}"}


def call_events(
    tenant: str = "acme", call: str | None = None, agent: str = "a-7"
) -> list[dict[str, Any]]:
    """The four events of one call, in order."""
    call_id = call or f"call-{uuid.uuid4().hex[:8]}"
    base = {
        "occurredAt": "2026-12-01T10:00:00Z",
        "tenant": tenant,
        "call": {"id": call_id, "externalId": "CX-1", "agent": {"id": agent, "name": "Dana"}},
    }
    return [
        {**base, "id": f"{call_id}-create", "type": "call_create"},
        {
            **base,
            "id": f"{call_id}-outcome",
            "type": "call_outcome",
            "ai": {"signal": "escalation", "emotion": {"label": "anger", "score": 0.9}},
        },
        {**base, "id": f"{call_id}-summary", "type": "call_summary", "ai": {"summary": "Refund."}},
        {**base, "id": f"{call_id}-score", "type": "quality_score", "qi": {"score": 42}},
    ]


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout} s")

"""``cxbridge demo``: the main job end to end on the embedded default, with nothing to set up.

It starts a webhook receiver on 127.0.0.1 that verifies every signature, points the example tenant at it,
runs the engine in this process on SQLite (store and broker), sends sample events of all four types
through it, and prints what the receiver got.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click

from cxbridge.errors import ConfigError, SignatureError
from cxbridge.events import parse_event
from cxbridge.settings import Settings
from cxbridge.signing import generate_secret, verify

__all__ = ["DemoReceiver", "run_demo", "sample_events"]


class DemoReceiver:
    """A webhook receiver on 127.0.0.1 that verifies signatures and keeps what it received."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    verify(body, dict(self.headers.items()), receiver.secret)
                    verified = True
                except SignatureError:
                    verified = False
                receiver.received.append(
                    {"headers": dict(self.headers.items()), "body": body, "verified": verified}
                )
                self.send_response(204 if verified else 401)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/cxmind"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> DemoReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def sample_events(count: int, tenant: str = "acme") -> list[dict[str, Any]]:
    """``count`` realistic events cycling through the four types, with hostile text in the summary."""
    now = datetime.now(UTC).isoformat()
    events = []
    for index in range(count):
        call = {
            "id": f"call-{index // 4}",
            "externalId": f"CX-{1000 + index // 4}",
            "direction": "inbound",
            "from": "+15550109999",
            "agent": {"id": "a-7", "name": "Dana Agent"},
            "customer": {"phone": "+15550109999", "name": 'Sam "The Customer" O\'Neil'},
        }
        kind = ("call_create", "call_outcome", "call_summary", "quality_score")[index % 4]
        event: dict[str, Any] = {
            "id": f"demo-{uuid.uuid4()}",
            "type": kind,
            "occurredAt": now,
            "tenant": tenant,
            "call": call,
        }
        if kind == "call_outcome":
            event["ai"] = {
                "emotion": {"label": "anger", "score": 0.8, "previous": "neutral"},
                "signal": "escalation",
            }
        elif kind == "call_summary":
            event["ai"] = {
                "summary": 'Asked to cancel. Said: ", "qa_status": "Pass\nand left \\ \u2028',
                "tags": ["billing"],
                "actionItems": [{"text": "Send refund", "owner": "Dana"}],
            }
        elif kind == "quality_score":
            event["qi"] = {"score": 80 + (index * 7) % 20, "passed": True, "rubric": []}
        events.append(event)
    return events


def run_demo(settings: Settings, *, events: int = 8, timeout: float = 30.0) -> int:
    """Run the demo; returns the process exit code (0 when every delivery arrived verified)."""
    from cxbridge.engine import Engine

    secret = generate_secret()
    with DemoReceiver(secret) as receiver, tempfile.TemporaryDirectory() as workdir:
        os.environ.setdefault("ACME_API_KEY", "demo-key")
        os.environ["ACME_WEBHOOK_URL"] = receiver.url
        os.environ["ACME_WEBHOOK_SECRET"] = secret
        settings = settings.model_copy(
            update={
                "database_url": f"sqlite:///{Path(workdir) / 'store.db'}",
                "broker_url": f"sqlite:///{Path(workdir) / 'broker.db'}",
            }
        )
        try:
            engine = Engine(settings)
        except ConfigError as exc:
            click.echo(str(exc), err=True)
            return 1
        click.echo(f"receiver: {receiver.url}")
        click.echo(f"tenants: {', '.join(engine.tenants)}; store and broker: SQLite in {workdir}")
        engine.start(threads=4)
        try:
            expected = 0
            for raw in sample_events(events):
                accepted = engine.accept(parse_event(raw))
                expected += len(accepted.delivery_ids)
                click.echo(
                    f"  accepted {raw['type']:<14} -> {len(accepted.delivery_ids)} delivery(s)"
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                counts = engine.store.status_counts()
                if counts.get("pending", 0) == 0:
                    break
                time.sleep(0.05)
        finally:
            engine.close()
        counts = engine.store.status_counts()
        click.echo(f"deliveries: {json.dumps(counts, sort_keys=True)}")
        for item in receiver.received:
            headers = {k.lower(): v for k, v in item["headers"].items()}
            mark = "verified" if item["verified"] else "BAD SIGNATURE"
            click.echo(
                f"  {headers.get('x-cxmind-event', '?'):<14} {mark}  {item['body'].decode()}"
            )
        ok = counts.get("delivered", 0) == expected and all(
            i["verified"] for i in receiver.received
        )
        click.echo("demo ok" if ok else "demo FAILED: not every delivery arrived verified")
        return 0 if ok else 1

"""``cxbridge demo``: the main job end to end on the embedded default, with nothing to set up.

A webhook receiver on 127.0.0.1 plays three endpoints of the example tenant (examples/tenants): a healthy
BI endpoint, a flaky escalation service that answers 503 twice before it recovers, and a ticketing endpoint
that rejects everything (422) until the demo "fixes" it; a fake Salesforce org and a fake Zendesk
account (``cxbridge.testing.fakes``) take the CRM destinations. The engine runs in this process on SQLite (store
and broker, the default ``var/`` files, kept afterwards), sample calls go through it, and a live table shows
deliveries, retries and dead letters; then the ticketing endpoint is healed and its dead letters are
replayed. At the end come the CRM records each call left (one Task and one ticket per call, a Case for
the escalation) and ``cxbridge deliveries``' view of the same story from the store.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import click
from rich.live import Live
from rich.table import Table

from cxbridge import console
from cxbridge.errors import SignatureError
from cxbridge.events import parse_event
from cxbridge.outcome import OutcomeKind
from cxbridge.settings import Settings
from cxbridge.signing import generate_secret, verify
from cxbridge.store import DEAD, DELIVERED, PENDING, DeliveryFilter

if TYPE_CHECKING:
    from cxbridge.engine import Engine
    from cxbridge.testing.fakes import FakeSalesforce, FakeZendesk

__all__ = ["DemoReceiver", "ExampleEndpoints", "example_endpoints", "run_demo", "sample_events"]

#: The endpoints the receiver plays, by path: what each answers.
HEALTHY, FLAKY, REJECTING = "/bi", "/escalations", "/tickets"
FLAKY_FAILURES = 2  # 503s per delivery before the flaky endpoint recovers


class DemoReceiver:
    """Webhook endpoints on 127.0.0.1 that verify every signature and remember every request."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self.rejecting = True
        self._tries: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver.answer(self.path, body, dict(self.headers.items()))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        try:
            verify(body, headers, self.secret)
            verified = True
        except SignatureError:
            verified = False
        with self._lock:
            key = f"{path} {headers.get('webhook-id')}"
            self._tries[key] += 1
            if not verified:
                status = 401
            elif path == FLAKY and self._tries[key] <= FLAKY_FAILURES:
                status = 503
            elif path == REJECTING and self.rejecting:
                status = 422
            else:
                status = 204
            self.received.append(
                {
                    "path": path,
                    "headers": headers,
                    "body": body,
                    "verified": verified,
                    "status": status,
                }
            )
        return status

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


@dataclass
class ExampleEndpoints:
    """What the example tenant's destinations reach in the demo: the webhook receiver and the fake
    Salesforce org and Zendesk account, all on 127.0.0.1."""

    receiver: DemoReceiver
    salesforce: FakeSalesforce
    zendesk: FakeZendesk

    def crm_summary(self) -> str:
        tasks, cases = (len(self.salesforce.records[name]) for name in ("Task", "Case"))
        tags = sorted({t for ticket in self.zendesk.tickets.values() for t in ticket["tags"]})
        return (
            f"Salesforce: {tasks} Task(s), {cases} Case(s); Zendesk: "
            f"{len(self.zendesk.tickets)} ticket(s) tagged {', '.join(tags) or '-'}"
        )


@contextlib.contextmanager
def example_endpoints() -> Iterator[ExampleEndpoints]:
    """Start the receiver and the fake CRMs, and point the example tenant's variables at them (API
    key: ``demo-key`` unless ``ACME_API_KEY`` is set) until the block ends. ``cxbridge serve`` on the
    example does the same."""
    from cxbridge.testing.fakes import FakeSalesforce, FakeZendesk

    with (
        DemoReceiver(generate_secret()) as receiver,
        FakeSalesforce() as salesforce,
        FakeZendesk() as zendesk,
    ):
        variables = {
            "ACME_API_KEY": os.environ.get("ACME_API_KEY", "demo-key"),
            "ACME_WEBHOOK_SECRET": receiver.secret,
            "ACME_WEBHOOK_URL": receiver.base + HEALTHY,
            "ACME_ESCALATION_URL": receiver.base + FLAKY,
            "ACME_TICKETS_URL": receiver.base + REJECTING,
            "ACME_SF_ENDPOINT": salesforce.url,
            "ACME_SF_CONSUMER_KEY": salesforce.consumer_key,
            "ACME_SF_CONSUMER_SECRET": salesforce.consumer_secret,
            "ACME_ZENDESK_ENDPOINT": zendesk.url,
            "ACME_ZENDESK_EMAIL": zendesk.email,
            "ACME_ZENDESK_TOKEN": zendesk.token,
        }
        before = {name: os.environ.get(name) for name in variables}
        os.environ.update(variables)
        try:
            yield ExampleEndpoints(receiver, salesforce, zendesk)
        finally:  # the endpoints are gone: so are the variables that named them
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def run_demo(settings: Settings, *, events: int = 8, timeout: float = 45.0) -> int:
    """Run the demo; returns the process exit code (0 when every delivery arrived verified)."""
    from cxbridge.engine import Engine

    with example_endpoints() as endpoints:
        receiver = endpoints.receiver
        engine = Engine(settings)
        click.echo(f"store {settings.database_url}, broker {settings.broker_url} (kept afterwards)")
        click.echo(
            f"receiver {receiver.base}: {HEALTHY} healthy, {FLAKY} fails {FLAKY_FAILURES}x "
            f"then recovers, {REJECTING} rejects (422) until fixed; fake Salesforce "
            f"{endpoints.salesforce.url}, fake Zendesk {endpoints.zendesk.url}"
        )
        engine.start(threads=4, interval=0.2)
        try:
            ids = _send(engine, sample_events(events))
            told: set[int] = set()  # attempts already printed
            _watch(engine, ids, timeout, "delivering (retries and dead letters show up here)", told)
            dead = [
                r.id for r in engine.store.list_deliveries(DeliveryFilter(ids=ids, status=DEAD))
            ]
            if dead:
                receiver.rejecting = False
                click.echo(f"\n{REJECTING} is fixed now: replaying its {len(dead)} dead letter(s)")
                from cxbridge.replay import replay

                replay(engine, DeliveryFilter(ids=dead, status=DEAD))
                _watch(engine, ids, timeout, "replaying", told)
        finally:
            engine.close()
        records = engine.store.list_deliveries(DeliveryFilter(ids=ids, status=None))
        crm = endpoints.crm_summary()
    click.echo("\nWhat the store says (`.venv/bin/cxbridge deliveries` shows the same):")
    console.console().print(console.deliveries_table(records))
    bad = [r for r in receiver.received if not r["verified"]]
    retried = sum(1 for r in receiver.received if r["status"] >= 500)
    delivered = sum(1 for r in records if r.status == DELIVERED)
    click.echo(
        f"\n{delivered}/{len(records)} delivered, {retried} retried 503(s), "
        f"{len(bad)} bad signature(s) out of {len(receiver.received)} request(s)"
    )
    click.echo(crm)
    if dead:
        click.echo(f"see one delivery's every attempt: .venv/bin/cxbridge show {dead[0]}")
    ok = delivered == len(records) and not bad
    click.echo("demo ok" if ok else "demo FAILED: not every delivery arrived verified")
    return 0 if ok else 1


def _send(engine: Engine, raw_events: list[dict[str, Any]]) -> list[str]:
    ids: list[str] = []
    for raw in raw_events:
        accepted = engine.accept(parse_event(raw))
        names = [engine.store.get_delivery(i) for i in accepted.delivery_ids]
        where = ", ".join(r.destination for r in names if r is not None)
        click.echo(f"  {raw['type']:<14} -> {where or 'no destination of acme subscribes to it'}")
        ids += accepted.delivery_ids
    return ids


def _watch(engine: Engine, ids: list[str], timeout: float, title: str, told: set[int]) -> None:
    """A live table of the deliveries by destination until none is pending (or ``timeout``), and a
    line for each failed attempt not in ``told`` yet."""
    deadline = time.monotonic() + timeout
    out = console.console()
    with Live(console=out, auto_refresh=False) as live:
        while True:
            records = engine.store.list_deliveries(DeliveryFilter(ids=ids, status=None))
            for record in records:
                for attempt in engine.store.attempts_of(record.id):
                    if attempt["outcome"] != OutcomeKind.DELIVERED and attempt["id"] not in told:
                        told.add(attempt["id"])
                        out.print(_failed_attempt(record, attempt))
            live.update(_table(records, title), refresh=True)
            if all(r.status != PENDING for r in records) or time.monotonic() > deadline:
                return
            time.sleep(0.25)


def _failed_attempt(record: Any, attempt: dict[str, Any]) -> str:
    if record.status == DEAD:
        then = "dead letter"
    elif record.status == PENDING and record.next_attempt_at is not None:
        wait = (record.next_attempt_at - datetime.now(UTC)).total_seconds()
        then = f"retry in {max(wait, 0):.1f} s"
    else:
        then = "retried"  # already attempted again by the time the table looked
    return (
        f"  {record.destination:<12} {record.event_type:<13} attempt {attempt['number']}: "
        f"{attempt['error']} -> {then}"
    )


def _table(records: list[Any], title: str) -> Table:
    by_destination: dict[str, collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    for r in records:
        counts = by_destination[r.destination]
        counts[r.status] += 1
        counts["attempts"] += r.attempts
    table = Table("destination", "delivered", "pending", "dead", "attempts", title=title)
    for name, counts in sorted(by_destination.items()):
        table.add_row(name, *(str(counts[key]) for key in (DELIVERED, PENDING, DEAD, "attempts")))
    return table

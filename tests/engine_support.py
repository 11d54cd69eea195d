"""Building engines for tests: a tenant file, a scripted plugin, a fake clock and a chosen store/broker."""

from __future__ import annotations

import textwrap
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker

from cxbridge.clock import FakeClock
from cxbridge.config import load_tenant
from cxbridge.engine import Engine
from cxbridge.events import Event, parse_event
from cxbridge.plugins import PluginManager
from cxbridge.settings import Settings
from cxbridge.store import DeliveryFilter, Store
from tests.scripted_plugin import ScriptedPlugin

TENANT_YAML = """
tenant: acme
destinations:
  crm:
    type: scripted
    events: [call_summary, quality_score]
  low-scores:
    type: scripted
    events: [quality_score]
    when: qi.score < 50
"""


def make_event(
    kind: str = "quality_score", *, event_id: str | None = None, score: float = 40, **extra: Any
) -> Event:
    data: dict[str, Any] = {
        "id": event_id or f"evt-{uuid.uuid4()}",
        "type": kind,
        "occurredAt": "2026-01-01T00:00:00Z",
        "tenant": "acme",
        "call": {"id": "call-1", "externalId": "CX-1"},
    }
    if kind == "quality_score":
        data["qi"] = {"score": score}
    elif kind == "call_summary":
        data["ai"] = {"summary": "Customer asked for a refund."}
    elif kind == "call_outcome":
        data["ai"] = {"signal": "escalation", "emotion": {"label": "anger", "score": 0.9}}
    data.update(extra)
    return parse_event(data)


MakeEngine = Callable[..., tuple[Engine, ScriptedPlugin, FakeClock]]


def build_engine(
    tmp_path: Path,
    *,
    plugin: ScriptedPlugin | None = None,
    tenant_yaml: str = TENANT_YAML,
    database_url: str | None = None,
    broker: dramatiq.Broker | None = None,
    clock: FakeClock | None = None,
    env: Mapping[str, str] | None = None,
    manager: PluginManager | None = None,
    **engine_options: Any,
) -> tuple[Engine, ScriptedPlugin, FakeClock]:
    """An engine on a fake clock. ``manager`` brings other plugins (e.g. loaded from entry points);
    the scripted plugin is registered into it too, and records every dead letter."""
    plugin = plugin or ScriptedPlugin()
    clock = clock or FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    manager = manager or PluginManager()
    manager.register(plugin, name="scripted")
    tenant_file = tmp_path / "acme.yaml"
    tenant_file.write_text(textwrap.dedent(tenant_yaml))
    tenant = load_tenant(tenant_file, manager.destination_types, env or {})
    settings = Settings(
        config_dir=tmp_path,
        database_url=database_url or f"sqlite:///{tmp_path / 'store.db'}",
        broker_url=f"sqlite:///{tmp_path / 'broker.db'}",
    )
    store = Store(settings.database_url, clock=clock)
    engine = Engine(
        settings,
        clock=clock,
        plugins=manager,
        tenants={tenant.name: tenant},
        store=store,
        broker=broker or StubBroker(),
        **engine_options,
    )
    return engine, plugin, clock


def wait_until_settled(engine: Engine, timeout: float = 30.0) -> dict[str, int]:
    """Wait until no delivery is pending; returns the status counts (fails with the stuck ones)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = engine.store.status_counts()
        if counts.get("pending", 0) == 0:
            return counts
        time.sleep(0.05)
    stuck = [
        (r.id, r.attempts, r.next_attempt_at, engine.store.attempts_of(r.id))
        for r in engine.store.list_deliveries(DeliveryFilter(status="pending"))
    ]
    extra = getattr(engine.broker, "message_counts", lambda q: None)(engine.queue_name)
    raise AssertionError(f"still pending after {timeout} s: {counts}; {stuck}; broker {extra}")

"""Test helpers over the real engine: canned events, destinations loaded from plain options, deliveries
as the engine builds them, and :class:`Bridge` — an isolated engine that settles on a fake clock."""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import yaml

from cxbridge.clock import FakeClock
from cxbridge.config import load_tenant
from cxbridge.destinations import Destination
from cxbridge.engine import Engine
from cxbridge.events import EVENT_TYPES, Event, parse_event
from cxbridge.outcome import Delivery, Payload
from cxbridge.plugins import PluginManager
from cxbridge.routing import Accepted, delivery_id, event_body
from cxbridge.store import PENDING, AttemptRecord, DeliveryRecord

__all__ = [
    "EVENTS_DIR",
    "Bridge",
    "canned_event",
    "make_delivery",
    "make_destination",
    "plugin_manager",
]

EVENTS_DIR = Path(__file__).parent / "events"


def canned_event(event_type: str, **changes: Any) -> Event:
    """A realistic event of ``event_type`` (one of ``cxbridge.EVENT_TYPES``), tenant ``acme``.

    ``changes`` replace top-level wire fields, e.g. ``canned_event("call_summary", id="evt-2")``.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
    data = json.loads((EVENTS_DIR / f"{event_type}.json").read_text(encoding="utf-8"))
    data.update(changes)
    return parse_event(data)


def plugin_manager(plugins: Iterable[object] = (), *, entry_points: bool = False) -> PluginManager:
    """A plugin manager with ``plugins`` registered (and the installed entry points, if asked)."""
    manager = PluginManager()
    if entry_points:
        manager.load_entrypoints()
    manager.register_objects(plugins)
    return manager


def make_destination(
    destination_type: str,
    options: Mapping[str, Any],
    *,
    plugins: PluginManager,
    events: Sequence[str] = tuple(EVENT_TYPES),
    name: str = "dest",
    tenant: str = "acme",
    timezone: str = "UTC",
    env: Mapping[str, str] | None = None,
) -> Destination:
    """A destination loaded exactly as from a tenant file — options validated, templates compiled
    and checked against ``events``, ``${VAR}`` read from ``env``. Raises :class:`~cxbridge.ConfigError`
    as ``cxbridge validate`` would report it."""
    document = {
        "tenant": tenant,
        "timezone": timezone,
        "destinations": {name: {"type": destination_type, "events": list(events), **options}},
    }
    with TemporaryDirectory(prefix="cxbridge-") as directory:
        path = Path(directory) / f"{tenant}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        return load_tenant(path, plugins.destination_types, env or {}).destinations[name]


def make_delivery(
    event: Event,
    destination: Destination,
    payload: Payload | None = None,
    *,
    attempt: int = 1,
) -> Delivery:
    """The delivery the engine would hand ``deliver``: its id is the one the engine gives this event
    and destination (stable across attempts, the idempotency key). ``payload`` is what ``transform``
    rendered; by default the event's own JSON."""
    return Delivery(
        id=delivery_id(event.tenant, event.id, destination.name),
        tenant=event.tenant,
        destination=destination.name,
        event_id=event.id,
        event_type=event.type,
        attempt=attempt,
        payload=payload if payload is not None else Payload(event_body(event)),
    )


class Bridge:
    """A real engine for one tenant on a temporary SQLite store and broker and a :class:`FakeClock`.

    ``settle()`` makes every attempt itself, in this thread, moving the clock to each retry, so a
    24-hour retry window passes in milliseconds. The broker only collects messages; no worker runs.
    """

    def __init__(
        self,
        tenant_yaml: str,
        directory: Path,
        *,
        plugins: Iterable[object] = (),
        entry_points: bool = True,
        env: Mapping[str, str] | None = None,
        clock: FakeClock | None = None,
    ) -> None:
        config = directory / "tenants"
        config.mkdir(parents=True, exist_ok=True)
        (config / "tenant.yaml").write_text(textwrap.dedent(tenant_yaml), encoding="utf-8")
        self.clock = clock or FakeClock()
        self.engine = Engine.from_config(
            config,
            database_url=f"sqlite:///{directory / 'store.db'}",
            broker_url=f"sqlite:///{directory / 'broker.db'}",
            queue_name=f"kit-{uuid.uuid4().hex[:12]}",
            clock=self.clock,
            plugins=plugins,
            entry_points=entry_points,
            env=env if env is not None else {},
        )

    def send(self, event: Event) -> Accepted:
        """Accept an event as the ingress would: store it and fan it out."""
        return self.engine.accept(event)

    def settle(self, max_steps: int = 500) -> list[DeliveryRecord]:
        """Attempt every pending delivery until none is pending, advancing the clock to the next
        retry whenever nothing is due; returns every delivery. Raises ``AssertionError`` when
        deliveries are still pending after ``max_steps`` rounds."""
        for _ in range(max_steps):
            pending = self.engine.deliveries(status=PENDING)
            if not pending:
                return self.engine.deliveries()
            now = self.clock.now()
            due = [d for d in pending if d.next_attempt_at is None or d.next_attempt_at <= now]
            if not due:
                self.clock.set(min(d.next_attempt_at or now for d in pending))
            for record in due:
                self.engine.process(record.id)
        still = [f"{d.id} ({d.attempts} attempts: {d.last_error})" for d in pending]
        raise AssertionError(f"not settled after {max_steps} rounds: {', '.join(still)}")

    def deliveries(self, **where: Any) -> list[DeliveryRecord]:
        """As :meth:`cxbridge.Engine.deliveries`."""
        return self.engine.deliveries(**where)

    def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        """As :meth:`cxbridge.Engine.attempts`."""
        return self.engine.attempts(delivery_id)

    def close(self) -> None:
        self.engine.close()

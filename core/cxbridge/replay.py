"""Replay: send stored deliveries again — one, a filtered set, or everything dead since a time.

A replay re-sends the stored payload (the same bytes as the first attempt) with a fresh 24-hour retry
window; ``rerender=True`` renders it again from the stored event with the current configuration.

A replayed delivery of an ordered destination takes its place in its key's order again, by its
event's time: it waits for a delivery of its key in flight, and pending deliveries of the key whose
events occurred later wait for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cxbridge.errors import DeliveryError
from cxbridge.events import parse_event
from cxbridge.outcome import Payload
from cxbridge.routing import render_payload
from cxbridge.store import DeliveryFilter, DeliveryRecord

if TYPE_CHECKING:
    from cxbridge.engine import Engine

__all__ = ["replay"]


def replay(
    engine: Engine,
    where: DeliveryFilter,
    *,
    rerender: bool = False,
    progress: Callable[[int], object] | None = None,
    batch: int = 500,
) -> int:
    """Make every delivery matching ``where`` pending again and enqueue it. Returns how many."""
    records = engine.store.list_deliveries(where)
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        payloads = {r.id: _rerender(engine, r) for r in chunk} if rerender else None
        ids = [r.id for r in chunk]
        engine.store.reset_for_replay(ids, payloads)
        engine.enqueue(engine.store.ready(ids))
        if progress is not None:
            progress(len(chunk))
    return len(records)


def _rerender(engine: Engine, record: DeliveryRecord) -> Payload:
    body = engine.store.event_body(record.tenant, record.event_id)
    tenant = engine.tenants.get(record.tenant)
    destination = tenant.destinations.get(record.destination) if tenant else None
    if body is None or destination is None:
        raise DeliveryError(
            "cannot re-render: the event or its destination is gone; replay without --rerender",
            delivery_id=record.id,
            tenant=record.tenant,
            destination=record.destination,
            event_id=record.event_id,
        )
    return render_payload(engine.hooks, parse_event(body), destination)

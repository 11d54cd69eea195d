"""Replay: send stored deliveries again — one, a filtered set, or everything dead since a time.

A replay re-sends the stored payload (the same bytes as the first attempt) with a fresh 24-hour retry
window; ``rerender=True`` renders it again from the stored event with the current configuration. Only
finished deliveries (dead or delivered) are replayed: one still pending is skipped and counted, since
its next attempt is already scheduled, or running right now (leased), and a reset would let a second
worker send it beside the first.

A replayed delivery of an ordered destination takes its place in its key's order again, by its
event's time: it waits for a delivery of its key in flight, and pending deliveries of the key whose
events occurred later wait for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cxbridge.errors import DeliveryError
from cxbridge.events import parse_event
from cxbridge.outcome import Payload
from cxbridge.routing import render_payload
from cxbridge.store import DeliveryFilter, DeliveryRecord

if TYPE_CHECKING:
    from cxbridge.engine import Engine

__all__ = ["ReplayResult", "replay"]


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did: ``replayed`` deliveries made pending and enqueued again; ``in_flight`` ones
    skipped because an attempt is running (leased), ``pending`` ones skipped because their next
    attempt is already scheduled."""

    replayed: int = 0
    in_flight: int = 0
    pending: int = 0

    @property
    def skipped(self) -> int:
        return self.in_flight + self.pending

    def __str__(self) -> str:
        text = f"{self.replayed} deliveries enqueued again"
        reasons = [
            f"{self.in_flight} in flight (an attempt is running)" if self.in_flight else "",
            f"{self.pending} still pending (their next attempt is scheduled)"
            if self.pending
            else "",
        ]
        skipped = ", ".join(reason for reason in reasons if reason)
        return f"{text}; {self.skipped} skipped: {skipped}" if skipped else text


def replay(
    engine: Engine,
    where: DeliveryFilter,
    *,
    rerender: bool = False,
    progress: Callable[[int], object] | None = None,
    batch: int = 500,
) -> ReplayResult:
    """Make every finished delivery matching ``where`` pending again and enqueue it; skip (and count)
    the ones still pending or in flight."""
    records = engine.store.list_deliveries(where)
    result = ReplayResult()
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        payloads = {r.id: _rerender(engine, r) for r in chunk} if rerender else None
        reset = engine.store.reset_for_replay([r.id for r in chunk], payloads)
        engine.enqueue(engine.store.ready(reset.reset))
        result = ReplayResult(
            result.replayed + len(reset.reset),
            result.in_flight + len(reset.in_flight),
            result.pending + len(reset.pending),
        )
        if progress is not None:
            progress(len(chunk))
    return result


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

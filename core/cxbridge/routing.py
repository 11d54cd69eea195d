"""Fan-out: an accepted event becomes one stored delivery per matching destination.

Each destination whose ``events`` list and ``when`` condition match gets its payload rendered once by
``transform``; the event and its deliveries are stored in one transaction. Only the accept whose insert
stored the event then calls the ``on_event`` hooks and enqueues the deliveries — except those that wait
behind an earlier delivery of their ordering key (see :func:`ordering_key`) — so the same event id
again (even concurrently, from another thread or process) fans out and observes nothing new.

Errors: :meth:`Router.accept` raises only cxbridge errors, and only when nothing was stored. Once the
event and its deliveries are committed it returns, whatever the broker does: a delivery whose message
could not be sent stays "not enqueued" in the store, and the scheduler sends it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from cxbridge.config import TenantConfig
from cxbridge.destinations import Destination
from cxbridge.errors import CxbridgeError, StoreUnavailableError, TemplateError
from cxbridge.events import Event
from cxbridge.outcome import Payload
from cxbridge.plugins import Hooks
from cxbridge.store import NewDelivery, Store

__all__ = [
    "Accepted",
    "Router",
    "UnknownTenantError",
    "delivery_id",
    "ordering_key",
    "render_payload",
]

log = logging.getLogger(__name__)


class UnknownTenantError(CxbridgeError):
    """An event names a tenant that has no configuration file."""


def delivery_id(tenant: str, event_id: str, destination: str) -> str:
    """The stable id of the delivery of one event to one destination: the same on every attempt,
    replay and process, so it can serve as the destination's idempotency key."""
    digest = hashlib.sha256(f"{tenant}\0{event_id}\0{destination}".encode()).hexdigest()
    return f"dlv_{digest[:32]}"


def ordering_key(event: Event) -> str:
    """The ordering key of an event's deliveries to an ordered destination: its call id (hashed
    when longer than the column), so the events of one call reach the destination one at a time."""
    call_id = event.call.id
    if len(call_id) <= 200:
        return call_id
    return "sha256:" + hashlib.sha256(call_id.encode()).hexdigest()


def event_body(event: Event) -> bytes:
    """The event's canonical JSON, as stored and as sent when no plugin transforms it."""
    return event.model_dump_json(by_alias=True).encode()


def render_payload(hooks: Hooks, event: Event, destination: Destination) -> Payload:
    """The payload for one destination: the ``transform`` hooks' answer, or the event's own JSON."""
    payload = hooks.transform(event, destination)
    return payload if payload is not None else Payload(event_body(event))


@dataclass(frozen=True)
class Accepted:
    """What ingesting one event did.

    ``delivery_ids`` names one delivery per destination the event went to (read them with
    :meth:`Engine.delivery <cxbridge.Engine.delivery>`); ``dead`` those dead-lettered at once (a
    template error). A ``duplicate`` event (same tenant and id as one already stored) creates and
    sends nothing new: its ``delivery_ids`` are the deliveries the first copy made, still stored.
    """

    event_id: str
    duplicate: bool
    delivery_ids: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)


class Router:
    """Fans events out. ``enqueue`` sends the deliveries' messages; it must not raise (what it cannot
    send, it leaves unmarked in the store for the scheduler)."""

    def __init__(
        self,
        store: Store,
        hooks: Hooks,
        tenants: Mapping[str, TenantConfig],
        enqueue: Callable[[Sequence[str]], object],
        dispatch_dead: Callable[[Sequence[str]], object],
    ) -> None:
        self.store = store
        self.hooks = hooks
        self.tenants = tenants
        self.enqueue = enqueue
        # Runs on_delivery_failed for dead letters just stored (cxbridge.outbox).
        self.dispatch_dead = dispatch_dead

    def accept(self, event: Event) -> Accepted:
        tenant = self.tenants.get(event.tenant)
        if tenant is None:
            raise UnknownTenantError(
                f"no configuration for tenant {event.tenant!r}; add a tenant file for it",
                tenant=event.tenant,
                event_id=event.id,
            )
        with self._storing(event):
            if self.store.has_event(event.tenant, event.id):
                return self._duplicate(event)
        context = event.template_context(timezone=tenant.timezone)
        new: list[NewDelivery] = []
        for destination in tenant.destinations_for(event.type):
            if not destination.enabled:
                continue
            dead_reason = None
            payload = Payload(b"")
            try:
                if destination.when is not None and not destination.when.matches(
                    context, timezone=tenant.timezone
                ):
                    continue
                payload = render_payload(self.hooks, event, destination)
            except TemplateError as exc:
                dead_reason = f"template error: {exc}"
            except Exception as exc:  # a plugin's transform is third-party code
                dead_reason = f"transform failed: {type(exc).__name__}: {exc}"
            if dead_reason is not None:
                log.warning(
                    "event %s to %s/%s: %s", event.id, tenant.name, destination.name, dead_reason
                )
            did = delivery_id(event.tenant, event.id, destination.name)
            key = ordering_key(event) if destination.ordered else None
            new.append(NewDelivery(did, destination.name, payload, dead_reason, key))
        with self._storing(event):
            stored = self.store.add_event(
                tenant=event.tenant,
                event_id=event.id,
                event_type=event.type,
                occurred_at=event.occurred_at,
                body=event_body(event),
                new_deliveries=new,
            )
            if not stored:  # another process stored it between our check and our insert
                return self._duplicate(event)
        self.hooks.on_event(event, event.tenant)
        dead = [n.id for n in new if n.dead_reason is not None]
        pending = [n.id for n in new if n.dead_reason is None]
        if any(n.order_key is not None for n in new):
            # After the commit, so that this check and the finish of an earlier delivery of the
            # key cannot both miss each other: one of them enqueues it.
            pending = self.store.ready(pending)
        self.enqueue(pending)
        self.dispatch_dead(dead)
        return Accepted(event.id, False, [n.id for n in new], dead)

    @contextlib.contextmanager
    def _storing(self, event: Event) -> Iterator[None]:
        """Turn the database's own errors into :class:`StoreUnavailableError`. The event's
        transaction rolled back, so the caller may send it again."""
        try:
            yield
        except Exception as exc:
            if not self.store.is_database_error(exc):
                raise
            # The driver's own message: SQLAlchemy's adds the statement and its parameters.
            cause = getattr(exc, "orig", None) or exc
            raise StoreUnavailableError(
                f"the store could not save the event ({type(cause).__name__}: {cause}); nothing was "
                "stored: send the event again once the database is reachable and has space",
                tenant=event.tenant,
                event_id=event.id,
            ) from exc

    def _duplicate(self, event: Event) -> Accepted:
        tenant = self.tenants[event.tenant]
        ids = [delivery_id(event.tenant, event.id, name) for name in tenant.destinations]
        return Accepted(event.id, True, [i for i in ids if self.store.get_delivery(i)])

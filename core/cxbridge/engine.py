"""The delivery engine: the ``deliver`` actor, the retry decision, dead letters and the scheduler.

One :class:`Engine` per process ties together the store, the broker, the plugins and the tenants. The
actor carries only a delivery id; everything else is read from the store, so a lost or duplicated message
loses nothing and sends nothing twice at once (a delivery is leased while an attempt runs).

Deliveries to an ordered destination go one at a time per call, in the order their events occurred: only
the head of a key can be leased, and a waiting delivery gets its message when the attempt before it
finishes (or from the scheduler, should this process die in between).

The retry decision is ours, not Dramatiq's ``Retries`` middleware (which cannot stop "24 hours after the
first attempt"): each failed attempt stores ``next_attempt_at``; short waits are handed to the broker as a
delay, long ones wait in the store until the scheduler enqueues them. The scheduler also sends again
the messages the broker lost (counting, so that a long queue is not mistaken for lost messages), and
calls the ``on_delivery_failed`` hooks that a dying process left undone (:mod:`cxbridge.outbox`).

Every attempt is fenced: its lease carries a token that recording the result must present, so a result
that comes back after its lease was taken over changes nothing (it is kept as a stale attempt row).
While an attempt runs, the engine's heartbeat thread renews its lease.

Every started engine runs a scheduler thread; the one that holds the store's scheduler lock sweeps
(:mod:`cxbridge.election`). Outages: a broker that is away makes no call fail once the store has
committed (the scheduler sends what could not be sent); a store that is away fails ``accept`` with
``StoreUnavailableError`` and makes the broker retry a message later instead of dead-lettering it.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq

from cxbridge.brokers import broker_from_url
from cxbridge.brokers.depth import queue_depth
from cxbridge.clock import Clock, SystemClock
from cxbridge.config import TenantConfig, load_config_dir
from cxbridge.destinations import Destination
from cxbridge.election import Election
from cxbridge.events import Event
from cxbridge.leases import LeaseHeartbeat
from cxbridge.outbox import CLAIM_SECONDS, DeadLetterOutbox
from cxbridge.outcome import Delivery, Outcome, OutcomeKind
from cxbridge.plugins import PluginManager, load_plugins
from cxbridge.routing import Accepted, Router
from cxbridge.settings import Settings
from cxbridge.store import (
    EXCERPT_LIMIT,
    PENDING,
    AttemptRecord,
    DeliveryFilter,
    DeliveryRecord,
    Store,
)
from cxbridge.watchdog import ThreadWatchdog

__all__ = ["ACTOR_NAME", "QUEUE_NAME", "Engine"]

log = logging.getLogger(__name__)
ACTOR_NAME = "cxbridge_deliver"
QUEUE_NAME = "cxbridge"  # the default of CXBRIDGE_QUEUE_NAME
SWEEP_BATCH = 1000  # deliveries the scheduler reads and enqueues per query
SWEEP_BATCHES = 100  # at most this many batches of due deliveries per scheduler pass


def _retry_when_store_unavailable(retries: int, exception: BaseException) -> bool:
    return isinstance(exception, dramatiq.Retry)


class Engine:
    """Everything one process needs to accept events and deliver them.

    Embedders and tests build one with :meth:`from_config` (plain arguments); the constructor's
    parameters are internal. The last four default to the settings of the same names (``CXBRIDGE_LEASE_SECONDS``, ...).

    :param lease_seconds: how long a lease lasts unless renewed. A running attempt's lease is
        renewed every ``lease_seconds / 3`` (by :meth:`start`'s heartbeat thread), so attempts may
        run longer; a lease stops being renewed only when its process dies or freezes, and then
        another worker may attempt the delivery once the lease has run out.
    :param lost_after: a delivery whose message the broker no longer holds is enqueued again once
        the message was sent this long ago (plus the broker's redelivery bound); see :meth:`sweep`.
    :param short_delay: waits up to this many seconds go to the broker as a delay; longer ones wait in
        the store for the scheduler.
    :param hook_claim_seconds: ``on_delivery_failed`` hooks left undone this long after their dead
        letter (the process died) are called by the scheduler (see :mod:`cxbridge.outbox`).
    :param scheduler_lock_seconds: on SQLite, how long the scheduler's lock outlives its holder's
        last renewal (see :mod:`cxbridge.election`).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        plugins: PluginManager | None = None,
        tenants: Mapping[str, TenantConfig] | None = None,
        store: Store | None = None,
        broker: dramatiq.Broker | None = None,
        lease_seconds: float | None = None,
        lost_after: float | None = None,
        short_delay: float | None = None,
        queue_name: str | None = None,
        scheduler_lock_seconds: float = 5.0,
        hook_claim_seconds: float = CLAIM_SECONDS,
    ) -> None:
        self.settings = settings or Settings()
        self.clock = clock or SystemClock()
        self.plugins = plugins or load_plugins(self.settings)
        self.hooks = self.plugins.hooks
        self.tenants = (
            tenants
            if tenants is not None
            else load_config_dir(
                self.settings.config_dir,
                self.plugins.destination_types,
                env_allow=self.settings.tenant_env_allow,
            )
        )
        self.store = store or Store(self.settings.database_url, clock=self.clock)
        self.store.migrate()
        self.broker = broker or broker_from_url(self.settings.broker_url)
        self.lease_seconds = self.settings.lease_seconds if lease_seconds is None else lease_seconds
        self.lost_after = self.settings.lost_after if lost_after is None else lost_after
        self.short_delay = self.settings.short_delay if short_delay is None else short_delay
        self.queue_name = self.settings.queue_name if queue_name is None else queue_name
        self.outbox = DeadLetterOutbox(
            self.store, self.hooks, self._destination_of, claim_seconds=hook_claim_seconds
        )
        self.router = Router(
            self.store, self.hooks, self.tenants, self.enqueue, self.outbox.dispatch
        )
        # The retry decision is ours (see the module docstring), not Dramatiq's: the broker retries
        # a message only when the store was unavailable (``dramatiq.Retry``), with a backoff of
        # 1 s doubling to 60 s; any other error fails the message.
        self.actor: dramatiq.Actor[[str], None] = dramatiq.Actor(
            self._deliver_message,
            broker=self.broker,
            actor_name=ACTOR_NAME,
            queue_name=self.queue_name,
            priority=0,
            options={
                "max_retries": 0,
                "retry_when": _retry_when_store_unavailable,
                "min_backoff": 1000,
                "max_backoff": 60_000,
            },
        )
        self.scheduler_lock_seconds = scheduler_lock_seconds
        self._worker: Any = None
        self.watchdog: ThreadWatchdog | None = None  # while started
        self._stop = threading.Event()
        self._tally: collections.Counter[str] = collections.Counter()
        self._tally_lock = threading.Lock()
        self._scheduler: threading.Thread | None = None
        self.heartbeat = LeaseHeartbeat(self.store, self.lease_seconds)

    @classmethod
    def from_config(
        cls,
        config_dir: str | Path,
        *,
        database_url: str,
        broker_url: str,
        queue_name: str = QUEUE_NAME,
        clock: Clock | None = None,
        plugins: Iterable[object] = (),
        entry_points: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> Engine:
        """An engine from plain arguments; no ``CXBRIDGE_*`` variable or ``.env`` file is read.

        :param config_dir: the folder of tenant YAML files.
        :param database_url: the store, e.g. ``sqlite:///var/store.db``.
        :param broker_url: the broker, e.g. ``sqlite:///var/broker.db`` (embedded) or ``redis://…``.
        :param queue_name: the broker queue; engines sharing a broker but not a store must differ.
        :param clock: "now" for the engine and store (:class:`~cxbridge.FakeClock` in tests).
        :param plugins: plugin objects (modules, instances) to register besides the entry points.
        :param entry_points: load the installed plugins of the ``cxbridge`` entry-point group.
        :param env: where ``${VAR}`` in tenant files is looked up (default: the environment). A
            tenant file reads only its own variables (``ACME_…`` for tenant ``acme``).

        Other settings keep their defaults. Raises :class:`~cxbridge.ConfigError` listing every
        problem of the tenant files, :class:`~cxbridge.PluginError` for an invalid plugin.
        """
        settings = Settings.explicit(
            config_dir=Path(config_dir),
            database_url=database_url,
            broker_url=broker_url,
            queue_name=queue_name,
        )
        manager = load_plugins(settings) if entry_points else PluginManager()
        manager.register_objects(plugins)
        tenants = load_config_dir(settings.config_dir, manager.destination_types, env)
        return cls(settings, clock=clock, plugins=manager, tenants=tenants)

    # -- reading ---------------------------------------------------------------------------------

    def deliveries(
        self,
        *,
        tenant: str | None = None,
        destination: str | None = None,
        event_type: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[DeliveryRecord]:
        """Deliveries, oldest first; ``None`` filters nothing (``status``: ``pending``,
        ``delivered`` or ``dead``)."""
        where = DeliveryFilter(
            tenant=tenant, destination=destination, event_type=event_type, status=status
        )
        return self.store.list_deliveries(where, limit=limit)

    def delivery(self, delivery_id: str) -> DeliveryRecord | None:
        """One delivery by id (``Accepted.delivery_ids`` names them), or ``None``."""
        return self.store.get_delivery(delivery_id)

    def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        """The attempt log of one delivery, first attempt first."""
        return [AttemptRecord.from_mapping(row) for row in self.store.attempts_of(delivery_id)]

    # -- ingest ----------------------------------------------------------------------------------

    def accept(self, event: Event) -> Accepted:
        """Store an event, fan it out to its destinations and enqueue the deliveries."""
        return self.router.accept(event)

    def enqueue(self, delivery_ids: Sequence[str]) -> int:
        """Send one message per delivery, then mark the sent ones enqueued; returns how many were
        sent. Never raises: while the broker is away the rest stay "not enqueued" in the store, and
        the scheduler sends them once it is back."""
        sent: list[str] = []
        try:
            for delivery_id in delivery_ids:
                self.actor.send(delivery_id)
                sent.append(delivery_id)
        except Exception as exc:  # each broker's client raises its own types (redis, pika, sqlite3)
            log.warning(
                "broker unavailable, %d of %d message(s) left for the scheduler to send: %s: %s",
                len(delivery_ids) - len(sent),
                len(delivery_ids),
                type(exc).__name__,
                exc,
            )
        try:
            self.store.mark_enqueued(sent)
        except Exception as exc:
            if not self.store.is_database_error(exc):
                raise
            # Sent but not marked: the scheduler may send them once more, which the lease absorbs.
            log.warning("store unavailable, %d sent message(s) not marked: %s", len(sent), exc)
        return len(sent)

    def replace_tenants(self, tenants: Mapping[str, TenantConfig]) -> None:
        """Switch to reloaded tenant files: events accepted and attempts started from now on use them."""
        self.tenants = tenants
        self.router.tenants = tenants

    # -- one attempt -----------------------------------------------------------------------------

    def _deliver_message(self, delivery_id: str) -> None:
        try:
            self.process(delivery_id)
        except Exception as exc:
            if not self.store.is_database_error(exc):
                raise
            # Not a failed message: the broker keeps it and retries it with a backoff, instead of
            # dead-lettering a delivery the store still holds as pending (or even delivered).
            cause = getattr(exc, "orig", None) or exc
            log.warning(
                "delivery %s: store unavailable, message retried later: %s", delivery_id, cause
            )
            raise dramatiq.Retry(f"store unavailable: {type(cause).__name__}") from exc

    def process(self, delivery_id: str) -> Outcome | None:
        """Make one attempt of a delivery if it is pending and due; ``None`` if there was nothing to do."""
        leased = self.store.lease(delivery_id, self.lease_seconds)
        if leased is None:
            self._resend_if_early(delivery_id)
            return None
        record, disabled = leased
        assert record.lease_token is not None
        destination = self._destination_of(record)
        if destination is None:
            return self._kill(record, "destination no longer configured")
        if disabled is not None:
            return self._kill(record, f"destination disabled: {disabled}")

        started = self.clock.now()
        first_attempt_at = record.first_attempt_at or started
        delivery = Delivery(
            id=record.id,
            tenant=record.tenant,
            destination=record.destination,
            event_id=record.event_id,
            event_type=record.event_type,
            attempt=record.attempts,  # the lease took this attempt's number
            payload=record.payload,
            first_attempt_at=first_attempt_at,
        )
        timer = time.perf_counter()
        with self.heartbeat.holding(record.id, record.lease_token):
            outcome = self._call_deliver(delivery, destination)
        # Wall time, not the injectable clock: the attempt log shows how long the destination took.
        duration_ms = (time.perf_counter() - timer) * 1000
        now = self.clock.now()
        next_at = None
        dead_reason = None
        if outcome.kind is OutcomeKind.RETRY:
            policy = destination.retry_for(record.event_type)
            next_at = policy.next_attempt_at(
                attempt=delivery.attempt,
                first_attempt_at=first_attempt_at,
                now=now,
                retry_after=outcome.retry_after,
            )
            if next_at is None:
                dead_reason = f"window expired: {outcome.error}"
        elif outcome.kind is OutcomeKind.PERMANENT:
            dead_reason = f"permanent: {outcome.error}"
        short = next_at is not None and next_at - now <= timedelta(seconds=self.short_delay)
        recorded = self.store.finish_attempt(
            record,
            AttemptRecord(delivery.attempt, started, duration_ms, outcome),
            next_attempt_at=next_at,
            dead_reason=dead_reason,
            enqueued_at=next_at if short else None,
        )
        if not recorded:
            # The lease ran out and another attempt took over: this result changes nothing, so
            # no message is sent and no hook runs for it.
            log.warning(
                "stale result discarded: attempt %d of delivery %s (tenant %s, destination %s, "
                "event %s) ended with %s after its lease was lost; kept in the attempt log as stale",
                delivery.attempt,
                record.id,
                record.tenant,
                record.destination,
                record.event_id,
                outcome.kind.value,
            )
            return outcome
        self._tell(record, delivery.attempt, outcome, duration_ms, now, next_at, dead_reason)
        if short and next_at is not None:
            self._send_in(record.id, (next_at - now).total_seconds())
        self._enqueue_next_head(record)
        if dead_reason is not None:
            self.outbox.dispatch([record.id])
        return outcome

    def _tell(
        self,
        record: DeliveryRecord,
        attempt: int,
        outcome: Outcome,
        duration_ms: float,
        now: datetime,
        next_at: datetime | None,
        dead_reason: str | None,
    ) -> None:
        """The tally behind the worker's summary line, and one INFO line per recorded outcome
        (built only when INFO is on: this runs on every attempt)."""
        kind = "delivered" if outcome.ok else "dead" if dead_reason is not None else "retried"
        with self._tally_lock:
            self._tally[kind] += 1
        if outcome.disable_destination:
            log.warning(
                "destination %s/%s disabled: %s (`cxbridge enable -t %s -d %s` lifts it)",
                record.tenant,
                record.destination,
                outcome.error,
                record.tenant,
                record.destination,
            )
        if not log.isEnabledFor(logging.INFO):
            return
        where = f"{record.tenant}/{record.destination} {record.event_type} {record.id}"
        if kind == "delivered":
            log.info("delivered %s, attempt %d, %.0f ms", where, attempt, duration_ms)
        elif kind == "dead":
            log.info("dead letter %s after attempt %d: %s", where, attempt, dead_reason)
        else:
            wait = (next_at - now).total_seconds() if next_at else 0.0
            log.info(
                "retry %s, attempt %d: %s; next in %.1f s", where, attempt, outcome.error, wait
            )

    def take_tally(self) -> dict[str, int]:
        """How many attempts were delivered, retried and dead-lettered here since the last call."""
        with self._tally_lock:
            tally, self._tally = dict(self._tally), collections.Counter()
        return tally

    def _resend_if_early(self, delivery_id: str) -> None:
        """A message may arrive a moment before its delivery is due (the broker's and the store's
        clocks differ; delays are rounded). Send it again for the rest of the wait, rather than leave
        the delivery until the scheduler finds it lost ``lost_after`` seconds later."""
        record = self.store.get_delivery(delivery_id)
        if record is None or record.status != PENDING or record.next_attempt_at is None:
            return
        if record.order_key is not None and self.store.park(delivery_id):
            return  # waits behind its key: the head's finish (or the sweep) enqueues it later
        if record.lease_until is not None and record.lease_until > self.store.lease_now():
            return  # another worker is attempting it right now
        now = self.clock.now()
        remaining = (record.next_attempt_at - now).total_seconds()
        if remaining <= self.short_delay:
            self._send_in(delivery_id, remaining)

    def _enqueue_next_head(self, record: DeliveryRecord) -> None:
        """After an attempt (or dead letter) of an ordered delivery, committed: enqueue the next
        delivery of its key that may go now. A crash before this loses nothing: the waiting
        delivery was never enqueued (or was parked), so the sweep finds it once it is the head."""
        if record.order_key is not None:
            self.enqueue(self.store.next_heads(record))

    def _send_in(self, delivery_id: str, seconds: float) -> None:
        """Enqueue with a broker delay, rounded up: a message must not arrive before it is due.
        While the broker is away the scheduler finds the delivery lost and sends it again."""
        try:
            self.actor.send_with_options(
                args=(delivery_id,), delay=max(0, math.ceil(seconds * 1000))
            )
        except Exception as exc:  # the broker client's own types
            log.warning(
                "broker unavailable, retry of %s left for the scheduler: %s: %s",
                delivery_id,
                type(exc).__name__,
                exc,
            )

    def _call_deliver(self, delivery: Delivery, destination: Destination) -> Outcome:
        try:
            outcome = self.hooks.deliver(delivery, destination)
        except Exception as exc:
            log.exception("deliver hook raised for %s", delivery.id)
            return Outcome.retry(
                f"plugin raised {type(exc).__name__}: {exc}",
                response_excerpt=traceback.format_exc()[-EXCERPT_LIMIT:],
            )
        if outcome is None:
            return Outcome.permanent(
                f"no installed plugin delivers destination type {destination.type!r}"
            )
        return outcome

    def _destination_of(self, record: DeliveryRecord) -> Destination | None:
        tenant = self.tenants.get(record.tenant)
        return tenant.destinations.get(record.destination) if tenant else None

    def _kill(self, record: DeliveryRecord, reason: str) -> Outcome | None:
        if not self.store.kill(record, reason):
            log.warning(
                "delivery %s (tenant %s, destination %s) not dead-lettered (%s): its lease was "
                "lost to another attempt",
                record.id,
                record.tenant,
                record.destination,
                reason,
            )
            return None
        self._enqueue_next_head(record)
        self.outbox.dispatch([record.id])
        return Outcome.permanent(reason)

    # -- scheduling ------------------------------------------------------------------------------

    def sweep(self) -> int:
        """Enqueue deliveries that are due and have no message yet, and send again the messages the
        broker has lost. Returns how many messages were sent."""
        sent = 0
        # Batch after batch while batches come back full (a backlog fell due at once), but bounded:
        # a clock stepped back between a read and its mark could otherwise select a batch again.
        for _ in range(SWEEP_BATCHES):
            due = self.store.due(limit=SWEEP_BATCH)
            enqueued = self.enqueue(due)
            sent += enqueued
            if enqueued < len(due):
                return sent  # the broker is away: the rest waits for a pass once it is back
            if len(due) < SWEEP_BATCH:
                break
        lost = self._lost_messages()
        if lost:
            log.warning(
                "sending %d message(s) again: the broker holds fewer messages of queue %s than "
                "deliveries wait for (lost, or flushed)",
                len(lost),
                self.queue_name,
            )
            sent += self.enqueue(lost)
        return sent

    def _lost_messages(self) -> list[str]:
        """Deliveries whose message the broker lost: a long queue is not a lost message.

        The broker is asked first how many messages of our queue it holds, then the store how many
        deliveries wait for one. Only the shortfall is sent again, the longest-waiting first, and
        only deliveries enqueued longer ago than ``lost_after`` plus the broker's redelivery bound.
        Between the two counts, a message consumed and finished makes the broker's count look
        larger (a re-send waits for the next pass); only a message that ``accept`` both sends and
        marks in between can make it look smaller, and the extra message that causes then counts
        in the broker's favour while it waits in the queue.
        """
        depth = queue_depth(self.broker, self.queue_name)
        bound = depth.redelivery_bound if depth is not None else 0.0
        cutoff = self.store.now() - self.lost_after - bound
        if depth is None:
            # A broker we cannot ask (another Dramatiq broker class): what was enqueued
            # ``lost_after`` ago and is still not leased is taken as lost. Under a backlog that
            # sends messages still waiting in the queue a second time.
            return self.store.awaiting_message(enqueued_before=cutoff, limit=SWEEP_BATCH)
        shortfall = self.store.count_awaiting_message() - depth.messages
        if shortfall <= 0:
            return []
        return self.store.awaiting_message(
            enqueued_before=cutoff, limit=min(shortfall, SWEEP_BATCH)
        )

    def purge(self) -> int:
        """Delete finished deliveries older than the retention period."""
        cutoff = self.clock.now() - timedelta(days=self.settings.retention_days)
        return self.store.purge(cutoff)

    def _schedule_loop(self, election: Election, interval: float) -> None:
        """Campaign every ``interval`` seconds; sweep (and purge hourly) only while leading."""
        last_purge = 0.0
        while True:
            try:
                if election.campaign():
                    self.sweep()
                    self.outbox.dispatch_left_over()
                    if time.monotonic() - last_purge > 3600:
                        last_purge = time.monotonic()
                        self.purge()
            except Exception:
                log.exception("scheduler pass failed; trying again in %.1f s", interval)
            if self._stop.wait(interval):
                break
        election.resign()

    # -- running ---------------------------------------------------------------------------------

    def start(self, *, threads: int = 4, scheduler: bool = True, interval: float = 1.0) -> None:
        """Start worker threads, their watchdog and the scheduler thread in this process.
        :meth:`stop` ends them.

        The scheduler thread of every process campaigns for the scheduler lock in the store
        (:mod:`cxbridge.election`) every ``interval`` seconds and sweeps only while it holds it;
        a leader that dies is replaced within ``scheduler_lock_seconds`` plus ``interval``."""
        self._stop.clear()
        self._worker = dramatiq.Worker(
            self.broker, worker_threads=threads, queues={self.queue_name}
        )
        self._worker.start()
        self.watchdog = ThreadWatchdog(self._worker, interval=interval)
        self.watchdog.start()
        self.heartbeat.start()
        if scheduler:
            election = Election(self.store, ttl=self.scheduler_lock_seconds)
            self._scheduler = threading.Thread(
                target=self._schedule_loop,
                args=(election, interval),
                name="cxbridge-scheduler",
                daemon=True,
            )
            self._scheduler.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout)
            self._scheduler = None
        if self.watchdog is not None:
            self.watchdog.stop()  # first: the worker's threads are about to end on purpose
            self.watchdog = None
        if self._worker is not None:
            self._worker.stop(timeout=int(timeout * 1000))
            self._worker = None
        self.heartbeat.stop(timeout)  # after the worker: its last attempts kept their leases

    def close(self) -> None:
        """Stop the workers, then let plugins release their connections, then close broker and store."""
        self.stop()
        self.hooks.shutdown()
        self.broker.close()
        self.store.close()

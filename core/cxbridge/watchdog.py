"""A watchdog over a Dramatiq worker's threads: a consumer or worker thread that died is replaced.

Dramatiq's consumer threads restart their consumer after a connection error, but an exception raised
while cleaning up after one ends the thread for good (Dramatiq 2.2 ``ConsumerThread.close`` catches
only its own ``ConnectionError``); the worker then runs on without that queue's consumer, and with
Redis a dead delay-queue consumer leaves every short retry waiting. cxbridge's Redis consumer no
longer lets such errors out (:mod:`cxbridge.brokers.redis`); this watchdog covers whatever else may
end a thread, on every broker.

A replaced consumer starts empty; the dead one is closed first, which hands the messages it held in
memory (delayed ones) back to the broker. If the broker is away at that moment, Redis keeps them as
unacknowledged by this living worker until the process stops or dies.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["ThreadHealth", "ThreadWatchdog"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreadHealth:
    """How many of a worker's threads run: consumers (one per queue, and per delay queue) and
    worker threads; ``replaced`` counts the threads the watchdog has replaced so far."""

    consumers_alive: int
    consumers: int
    workers_alive: int
    workers: int
    replaced: int

    @property
    def ok(self) -> bool:
        return self.consumers_alive == self.consumers and self.workers_alive == self.workers


class ThreadWatchdog:
    """Checks ``worker`` (a started ``dramatiq.Worker``) every ``interval`` seconds from a thread of
    its own. Stop the watchdog before the worker: a stopping worker's threads end on purpose."""

    def __init__(self, worker: Any, *, interval: float = 1.0) -> None:
        self.worker = worker
        self.interval = interval
        self.replaced = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cxbridge-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def health(self) -> ThreadHealth:
        consumers = list(self.worker.consumers.values())
        workers = list(self.worker.workers)
        return ThreadHealth(
            consumers_alive=sum(t.is_alive() for t in consumers),
            consumers=len(consumers),
            workers_alive=sum(t.is_alive() for t in workers),
            workers=len(workers),
            replaced=self.replaced,
        )

    def check(self) -> int:
        """Replace every dead consumer and worker thread now; returns how many were replaced.

        Uses the worker's ``_add_consumer`` and ``_add_worker``, which build and start threads
        exactly as ``Worker.start`` does (Dramatiq is pinned to 2.2.x for this and the Redis
        consumer's internals)."""
        worker = self.worker
        replaced = 0
        for queue_name, thread in list(worker.consumers.items()):
            if thread.is_alive():
                continue
            log.warning("consumer thread of queue %r died; starting a new one", queue_name)
            with contextlib.suppress(Exception):  # its connection may be broken already
                thread.close()
            del worker.consumers[queue_name]
            worker._add_consumer(queue_name, delay=queue_name.endswith(".DQ"))
            replaced += 1
        for thread in list(worker.workers):
            if thread.is_alive():
                continue
            log.warning("worker thread %s died; starting a new one", thread.name)
            worker.workers.remove(thread)
            worker._add_worker()
            replaced += 1
        self.replaced += replaced
        return replaced

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:
                log.exception("watchdog check failed; trying again in %.1f s", self.interval)

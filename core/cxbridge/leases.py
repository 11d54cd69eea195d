"""The lease heartbeat: one thread per engine keeps the leases of its running attempts alive.

An attempt may take longer than ``lease_seconds`` (a plugin's total timeout may be up to 300 s, and a
CRM attempt is several requests in a row). Rather than refuse such configurations, the engine renews
the lease of every attempt it is running every ``lease_seconds / 3``, fenced by each lease's token, so
only a process that stops running (killed, or frozen longer than a lease) loses its leases.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from cxbridge.store import Store

__all__ = ["LeaseHeartbeat"]

log = logging.getLogger(__name__)


class LeaseHeartbeat:
    """Renews the leases of the attempts registered with :meth:`holding`, from one thread started by
    :meth:`start` (every ``lease_seconds / 3`` seconds of wall time) or on demand with :meth:`beat`."""

    def __init__(self, store: Store, lease_seconds: float) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self._held: dict[str, str] = {}  # lease token -> delivery id
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def holding(self, delivery_id: str, token: str) -> Iterator[None]:
        """Keep this lease alive while the block runs (the attempt and the recording of its result)."""
        with self._lock:
            self._held[token] = delivery_id
        try:
            yield
        finally:
            with self._lock:
                del self._held[token]

    def beat(self) -> int:
        """Renew every held lease now; returns how many were renewed."""
        with self._lock:
            held = dict(self._held)
        renewed = self.store.extend_leases(held, self.lease_seconds)
        with self._lock:
            # Still held but not renewed: another worker took the lease over. Its attempt's result
            # will be recorded as stale.
            lost = [held[token] for token in held.keys() - renewed if token in self._held]
        for delivery_id in lost:
            log.warning(
                "lease of delivery %s was lost while its attempt runs (taken over after it ran "
                "out); this attempt's result will be discarded as stale",
                delivery_id,
            )
        return len(renewed)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="cxbridge-lease-heartbeat", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                self.beat()
            except Exception:
                log.exception(
                    "renewing leases failed; trying again in %.1f s", self.lease_seconds / 3
                )

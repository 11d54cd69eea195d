"""Per-tenant token buckets for the ingress (per process: behind a load balancer of N servers a tenant
may post up to N times the rate)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """``rate`` events per second per tenant, ``burst`` at once. ``rate == 0`` never limits."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, tenant: str, count: int = 1) -> float:
        """Take ``count`` tokens; returns 0 when allowed, else the seconds to wait before retrying."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(tenant, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= count:
                self._buckets[tenant] = (tokens - count, now)
                return 0.0
            self._buckets[tenant] = (tokens, now)
            return (count - tokens) / self.rate

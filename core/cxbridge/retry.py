"""The retry policy: which failures retry, how long to wait, and when to give up.

The default schedule is exponential with full jitter (roughly 5 s, 30 s, 2 m, 10 m, 30 m, 1 h, 2 h, 4 h,
6 h, 8 h, ...) until 24 hours after the first attempt; then the delivery is dead.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cxbridge.outcome import Outcome

__all__ = [
    "RETRYABLE_STATUSES",
    "RetryPolicy",
    "outcome_for_status",
    "parse_retry_after",
]

# 408 Request Timeout, 425 Too Early, 429 Too Many Requests: the request may succeed later.
RETRYABLE_STATUSES = frozenset({408, 425, 429})


class RetryPolicy(BaseModel):
    """How one destination (or one event type of it) retries. All durations are in seconds.

    ``schedule`` gives the ceiling of each wait in turn (the last one repeats); the actual wait is drawn
    uniformly from ``[ceiling * (1 - jitter), ceiling]`` ("full jitter" at ``jitter=1``). Attempts stop
    when the next one would start more than ``window`` seconds after the first.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: float = Field(24 * 3600, gt=0, description="Give up this long after the first attempt.")
    schedule: tuple[float, ...] = Field(
        (5, 30, 120, 600, 1800, 3600, 7200, 14400, 21600, 28800),
        min_length=1,
        description="Ceilings of successive waits; the last one repeats.",
    )
    jitter: float = Field(1.0, ge=0, le=1, description="1 = full jitter, 0 = exact schedule.")
    max_retry_after: float = Field(
        6 * 3600, gt=0, description="A destination's Retry-After is clamped to this."
    )
    min_retry_after: float = Field(1, ge=0, description="...and to at least this.")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = self.schedule[min(attempt, len(self.schedule)) - 1]
        low = ceiling * (1 - self.jitter)
        return (rng or random).uniform(low, ceiling)

    def next_attempt_at(
        self,
        *,
        attempt: int,
        first_attempt_at: datetime,
        now: datetime,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> datetime | None:
        """When to try again after failed attempt ``attempt``, or ``None`` when the window is closed."""
        if retry_after is not None:
            wait = min(max(retry_after, self.min_retry_after), self.max_retry_after)
        else:
            wait = self.delay(attempt, rng)
        when = now + timedelta(seconds=wait)
        if when > first_attempt_at + timedelta(seconds=self.window):
            return None
        return when


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP-date); ``None`` if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def outcome_for_status(
    status: int,
    *,
    retry_after: str | None = None,
    excerpt: str | None = None,
    provider_code: str | None = None,
    remote_id: str | None = None,
    now: datetime | None = None,
    reason: str | None = None,
    origin: str | None = None,
) -> Outcome:
    """The outcome of an HTTP answer: 2xx delivered; 408/425/429/5xx retry (honouring
    ``Retry-After``); 410 permanent and disables the destination; any other status permanent.

    ``reason`` (the reason phrase) and ``origin`` (the host that answered) make the error read
    ``HTTP 503 Service Unavailable from api.example.com``."""
    details: dict[str, Any] = {
        "status_code": status,
        "response_excerpt": excerpt,
        "provider_code": provider_code,
        "remote_id": remote_id,
    }
    if 200 <= status < 300:
        return Outcome.delivered(**details)
    error = f"HTTP {status}{' ' + reason if reason else ''}{' from ' + origin if origin else ''}"
    if status in RETRYABLE_STATUSES or status >= 500:
        return Outcome.retry(error, retry_after=parse_retry_after(retry_after, now=now), **details)
    if status == 410:
        return Outcome.permanent(
            f"{error}: the receiver says this endpoint no longer exists, so the destination is "
            "disabled; fix its url, then run `cxbridge enable` and replay its dead letters",
            disable_destination=True,
            **details,
        )
    return Outcome.permanent(error, **details)

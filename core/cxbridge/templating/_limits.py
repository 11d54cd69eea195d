"""Per-render resource limits: the caps (``MAX_*``), the errors for going over them, and the
per-render state (time zone, filter work budget) that filters are charged against."""

from __future__ import annotations

import datetime as dt
import functools
from contextvars import ContextVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from liquid.exceptions import FilterArgumentError, ResourceLimitError

__all__ = [
    "MAX_FILTER_WORK",
    "MAX_INT_BITS",
    "MAX_ITEMS",
    "MAX_LOOP_ITERATIONS",
    "MAX_OUTPUT",
    "MAX_STRING",
    "MAX_URL",
    "_MAX_DATE_FORMAT",
    "_MAX_LOCALS",
    "_STATE",
    "_UTC",
    "_LimitExceeded",
    "_RangeTooLarge",
    "_RenderState",
    "_TotalLoopLimit",
    "_charge",
    "zone",
]

# --- limits (per render) -------------------------------------------------------------------------

MAX_ITEMS = 10_000
"""Largest range (``(1..n)``) or list a filter may produce."""
MAX_STRING = 1 << 20
"""Longest string (characters) a filter may produce."""
MAX_OUTPUT = 1 << 20
"""Most characters one render may write, over all leaves of a JSON document."""
MAX_LOOP_ITERATIONS = 10_000
"""Most loop iterations one render may run, nested loops counted as the product of their lengths."""
MAX_FILTER_WORK = 16 << 20
"""Most characters / items all filters of one render may consume and produce together."""
MAX_INT_BITS = 256
"""Largest integer (in bits) a filter may produce: stops ``times`` squaring bombs."""
MAX_URL = 8 * 1024
"""Longest URL (characters, once encoded) a :class:`UrlTemplate` renders; servers commonly refuse
longer request lines (HTTP 414), HTTP clients refuse them outright."""
_MAX_DATE_FORMAT = 200
_MAX_LOCALS = 4 << 20

_UTC = dt.UTC


# --- errors raised inside liquid -----------------------------------------------------------------


class _LimitExceeded(FilterArgumentError):
    """A filter's input or result is over a cap (a FilterArgumentError: liquid adds the token)."""


class _RangeTooLarge(ResourceLimitError):
    pass


class _TotalLoopLimit(ResourceLimitError):
    pass


# --- per-render state: time zone and filter work budget ------------------------------------------


class _RenderState:
    __slots__ = ("tz", "work")

    def __init__(self, tz: dt.tzinfo) -> None:
        self.tz = tz
        self.work = 0


_STATE: ContextVar[_RenderState | None] = ContextVar("cxbridge_template_render", default=None)


@functools.lru_cache(maxsize=256)
def zone(name: str) -> dt.tzinfo:
    """The ``tzinfo`` of an IANA time zone name (``Europe/Berlin``); ``ValueError`` if unknown."""
    if name in ("UTC", "utc", "Z", "Etc/UTC"):
        return _UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as 'Europe/Berlin'"
        ) from None


def _charge(amount: int) -> None:
    state = _STATE.get()
    if state is not None:
        state.work += amount
        if state.work > MAX_FILTER_WORK:
            raise _LimitExceeded(
                f"filter work limit reached ({MAX_FILTER_WORK:,} characters per render)", token=None
            )

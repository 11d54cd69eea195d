"""Filters: the guard wrapped around every filter (pre-checks, caps on results, work accounting),
cxbridge's own ``date`` and ``json`` filters, and rendered values as JSON-able Python values."""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import typing
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from liquid.exceptions import FilterArgumentError, UndefinedError
from liquid.stringify import to_liquid_string
from liquid.undefined import Undefined

from cxbridge.templating._limits import (
    _MAX_DATE_FORMAT,
    _STATE,
    _UTC,
    MAX_INT_BITS,
    MAX_ITEMS,
    MAX_STRING,
    _charge,
    _LimitExceeded,
)

if typing.TYPE_CHECKING:
    from cxbridge.templating._source import _Source

__all__ = ["_date", "_guard", "_json", "_to_json"]

# --- filters -------------------------------------------------------------------------------------


def _size(value: object) -> int:
    return len(value) if isinstance(value, str | list | tuple | range | dict) else 0


def _pre_join(value: object, *args: object, **_: object) -> None:
    sep = args[0] if args else " "
    if (
        isinstance(value, list | tuple | range)
        and isinstance(sep, str)
        and len(sep) * max(len(value) - 1, 0) > MAX_STRING
    ):
        raise _LimitExceeded(f"join would produce more than {MAX_STRING:,} characters", token=None)


def _pre_replace(value: object, *args: object, **_: object) -> None:
    if isinstance(value, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        count = value.count(old) if old else len(value) + 1
        if len(value) + count * (len(new) - len(old)) > MAX_STRING:
            raise _LimitExceeded(
                f"replace would produce more than {MAX_STRING:,} characters", token=None
            )


def _pre_split(value: object, *args: object, **_: object) -> None:
    if isinstance(value, str) and args and isinstance(args[0], str):
        parts = value.count(args[0]) + 1 if args[0] else len(value)
        if parts > MAX_ITEMS:
            raise _LimitExceeded(f"split would produce more than {MAX_ITEMS:,} items", token=None)


def _pre_times(value: object, *args: object, **_: object) -> None:
    other = args[0] if args else None
    if (
        isinstance(value, int)
        and isinstance(other, int)
        and value.bit_length() + other.bit_length() > MAX_INT_BITS * 2
    ):
        raise _LimitExceeded(f"times would produce an integer over {MAX_INT_BITS} bits", token=None)


_PRE_CHECKS: dict[str, Callable[..., None]] = {
    "join": _pre_join,
    "replace": _pre_replace,
    "split": _pre_split,
    "times": _pre_times,
}


def _guard(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter: pre-checks for multiplicative filters, caps on the result, work accounting."""
    pre = _PRE_CHECKS.get(name)

    @functools.wraps(func)
    def guarded(value: object, *args: object, **kwargs: object) -> object:
        if pre is not None:
            pre(value, *args, **kwargs)
        try:
            result = func(value, *args, **kwargs)
        except (ArithmeticError, ValueError) as err:  # e.g. ceil of infinity, decimal overflow
            raise FilterArgumentError(f"{name}: {err}", token=None) from err
        cls = type(result)
        if cls is str or cls is list:
            if len(result) > (MAX_STRING if cls is str else MAX_ITEMS):
                what = f"{MAX_STRING:,} characters" if cls is str else f"{MAX_ITEMS:,} items"
                raise _LimitExceeded(f"{name} produced more than {what}", token=None)
        elif cls is int and result.bit_length() > MAX_INT_BITS:
            raise _LimitExceeded(f"{name} produced an integer over {MAX_INT_BITS} bits", token=None)
        _charge(_size(value) + _size(result) + 1)
        return result

    return guarded


def _date(value: object, fmt: object = None) -> object:
    """``date`` in the render's time zone, of datetimes, ISO 8601 text, epoch seconds, "now"."""
    if isinstance(value, Undefined):
        return value  # raises when output, so `| default:` still works after it
    state = _STATE.get()
    tz = state.tz if state is not None else _UTC
    moment: dt.date
    if value in ("now", "today"):
        moment = dt.datetime.now(tz)
    elif isinstance(value, dt.datetime):
        moment = (value if value.tzinfo else value.replace(tzinfo=_UTC)).astimezone(tz)
    elif isinstance(value, dt.date):
        moment = value
    elif isinstance(value, bool) or value is None:
        return value
    elif isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
        try:
            moment = dt.datetime.fromtimestamp(int(value), tz)
        except (OverflowError, OSError, ValueError) as err:
            raise FilterArgumentError(f"date: {err}", token=None) from err
    elif isinstance(value, str):
        try:
            if len(value) == 10:  # a date alone: no time zone to convert
                moment = dt.date.fromisoformat(value)
            else:
                parsed = dt.datetime.fromisoformat(value)
                moment = (parsed if parsed.tzinfo else parsed.replace(tzinfo=_UTC)).astimezone(tz)
        except ValueError:
            return value  # not a date: returned unchanged, as Shopify's Liquid does
    else:
        raise FilterArgumentError(f"date expected a date, found {type(value).__name__}", token=None)
    if fmt is None or isinstance(fmt, Undefined):
        return moment.isoformat()
    fmt = str(fmt)
    if len(fmt) > _MAX_DATE_FORMAT:
        raise _LimitExceeded(f"date format longer than {_MAX_DATE_FORMAT} characters", token=None)
    return moment.strftime(fmt)


def _json(value: object) -> str:
    """``json``: the value as JSON text, e.g. for a text template that builds JSON by hand."""
    return json.dumps(_to_json(value, None), ensure_ascii=False, allow_nan=False)


# --- values as JSON ------------------------------------------------------------------------------


def _to_json(value: object, source: _Source | None) -> Any:
    """A rendered value as a JSON-able Python value (for a typed leaf)."""
    cls = type(value)
    if cls is str or cls is int or cls is bool or value is None:
        return value
    if isinstance(value, float) and cls is float:
        if math.isfinite(value):
            return value
        raise ValueError(f"{value} is not a JSON number")
    if isinstance(value, Undefined):
        token = getattr(value, "token", None)
        raise UndefinedError(f"{value.hint}", token=token)
    if isinstance(value, dict):
        return {str(k): _to_json(v, source) for k, v in value.items()}
    if isinstance(value, list | tuple | range):
        return [_to_json(v, source) for v in value]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool | int):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float):
        return _to_json(float(value), source)
    if isinstance(value, dt.date):
        return value.isoformat()
    return to_liquid_string(value, autoescape=False)

"""Liquid templates (python-liquid 2), JSON-first, strict and resource-limited.

Three kinds of template, each compiled once (at config load) and rendered many times:

* :class:`TextTemplate` - plain text: URLs, headers, text bodies.
* :class:`JsonTemplate` - a JSON/YAML document whose string leaves (and, optionally, keys) are
  Liquid. A leaf that is exactly one output statement, ``"{{ qi.score }}"``, keeps the value's type
  (number, bool, null, list, object); any other leaf renders to a string. The JSON encoder does all
  escaping, so event text can never break out of its field.
* :class:`Condition` - one Liquid boolean expression: ``qi.score > 85 and call.direction == "x"``.

Templates are untrusted. Rendering is STRICT (errors raise, limits hold). Undefined variables raise
when output, but are falsy in conditions and work with ``default``. Unknown filters and wrong filter
arity are refused at compile time. Every render is bounded: ranges, list sizes, string sizes,
integer sizes, loop iterations, output size and total filter work are capped (``MAX_*``).
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import inspect
import json
import math
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from liquid import BoundTemplate, Environment, FalsyStrictUndefined, Mode, RenderContext
from liquid.builtin.content import ContentNode
from liquid.builtin.expressions import FilteredExpression, TernaryFilteredExpression
from liquid.builtin.expressions.arguments import KeywordArgument
from liquid.builtin.expressions.filtered import Filter
from liquid.builtin.expressions.primitive import RangeLiteral
from liquid.builtin.output import OutputNode
from liquid.builtin.tags.if_tag import IfNode
from liquid.exceptions import (
    FilterArgumentError,
    LiquidError,
    LiquidInterrupt,
    LiquidTypeError,
    LocalNamespaceLimitError,
    LoopIterationLimitError,
    OutputStreamLimitError,
    ResourceLimitError,
    UndefinedError,
)
from liquid.expression import Expression
from liquid.output import LimitedStringIO
from liquid.stringify import to_liquid_string
from liquid.undefined import Undefined
from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from cxbridge.errors import TemplateRenderError, TemplateSyntaxError

if typing.TYPE_CHECKING:
    from liquid.ast import Node

__all__ = [
    "MAX_FILTER_WORK",
    "MAX_INT_BITS",
    "MAX_ITEMS",
    "MAX_LOOP_ITERATIONS",
    "MAX_OUTPUT",
    "MAX_STRING",
    "Condition",
    "JsonTemplate",
    "TextTemplate",
    "VariableRef",
    "check_variables",
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
_MAX_DATE_FORMAT = 200
_MAX_LOCALS = 4 << 20

Leaf: TypeAlias = tuple[str | int, ...]
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


# --- environment ---------------------------------------------------------------------------------


class _CappedRange(RangeLiteral):
    """A range literal that refuses ``(1..n)`` with more than MAX_ITEMS items.

    Parsed RangeLiterals are re-classed to this at compile time: python-liquid builds ranges in its
    expression parser, which has no hook for a limit.
    """

    __slots__ = ()

    def evaluate(self, context: RenderContext) -> range:
        result = super().evaluate(context)
        if len(result) > MAX_ITEMS:
            raise _RangeTooLarge(
                f"range of {len(result):,} items is over the limit of {MAX_ITEMS:,}",
                token=self.token,
            )
        return result

    async def evaluate_async(self, context: RenderContext) -> range:  # pragma: no cover - unused
        return self.evaluate(context)


class _Context(RenderContext):
    """A render context that also limits the total of loop iterations of one render."""

    __slots__ = ("iterations",)

    def __init__(self, template: BoundTemplate, globals: Mapping[str, object]) -> None:
        super().__init__(template, globals=globals)
        self.iterations = 0

    def raise_for_loop_limit(self, length: int = 1) -> None:
        super().raise_for_loop_limit(length)
        nested = 1
        for loop in self.loops:
            nested *= loop.length
        self.iterations += nested * length
        if self.iterations > MAX_LOOP_ITERATIONS:
            raise _TotalLoopLimit(
                f"loop iteration limit reached ({MAX_LOOP_ITERATIONS:,} per render)", token=None
            )


class _Buffer(LimitedStringIO):
    """Output buffer counting characters (cheaper than liquid's UTF-8 byte count)."""

    def write(self, s: str, /) -> int:
        if s:
            self.size += len(s)
            if self.size > self.limit:
                raise ResourceLimitError(
                    f"output limit reached ({MAX_OUTPUT:,} characters per render)", token=None
                )
        return super(LimitedStringIO, self).write(s)


class _Environment(Environment):
    context_depth_limit = 30
    loop_iteration_limit = MAX_LOOP_ITERATIONS
    local_namespace_limit = _MAX_LOCALS
    output_stream_limit = MAX_OUTPUT
    logical_not_operator = True
    logical_parentheses = True

    def setup_tags_and_filters(self, *, extra: bool = False) -> None:
        super().setup_tags_and_filters(extra=False)
        # Templates are single, self-contained strings: no partials to include or render.
        for tag in ("include", "render"):
            self.tags.pop(tag, None)
        self.filters["date"] = _date
        self.filters["json"] = _json
        self.filters = {name: _guard(name, func) for name, func in self.filters.items()}


_ENV = _Environment(tolerance=Mode.STRICT, undefined=FalsyStrictUndefined, strict_filters=True)
# A template to hang render contexts on, for documents of many leaves and for conditions.
_ANCHOR = _ENV.from_string("")


# --- positions and error conversion --------------------------------------------------------------


def _line_col(source: str, index: int) -> tuple[int, int]:
    index = max(0, min(index, len(source)))
    line = source.count("\n", 0, index) + 1
    return line, index - (source.rfind("\n", 0, index) + 1) + 1


def _where(leaf: Leaf | None) -> str:
    if leaf is None:
        return ""
    return "field " + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in leaf).lstrip(".")


class _Source:
    """A template's text and the offset of the author's text in it (a Condition is wrapped)."""

    __slots__ = ("authored", "leaf", "offset", "text")

    def __init__(self, text: str, leaf: Leaf | None = None, offset: int = 0, end: int = 0) -> None:
        self.text = text
        self.leaf = leaf
        self.offset = offset
        self.authored = text[offset : end or len(text)]

    def position(self, index: int) -> tuple[int, int]:
        return _line_col(self.authored, index - self.offset)

    def syntax_error(self, message: str, index: int | None) -> TemplateSyntaxError:
        line, column = self.position(index) if index is not None else (None, None)
        return TemplateSyntaxError(message, line=line, column=column, path=self.leaf)

    def render_error(self, err: BaseException) -> TemplateRenderError:
        token = getattr(err, "token", None)
        line = column = None
        if isinstance(err, LiquidError):
            message = str(err.message)
        else:
            message = f"{type(err).__name__}: {err}"
        if isinstance(err, LoopIterationLimitError | _TotalLoopLimit):
            message = f"loop iteration limit reached ({MAX_LOOP_ITERATIONS:,} per render)"
        elif isinstance(err, OutputStreamLimitError):
            message = f"output limit reached ({MAX_OUTPUT:,} characters per render)"
        elif isinstance(err, LocalNamespaceLimitError):
            message = "assigned values are too large (limit of about 4 MiB per render)"
        if isinstance(err, UndefinedError):
            message += "; write `| default: ...` for a value that may be missing"
        elif isinstance(err, ResourceLimitError | _LimitExceeded):
            message = f"resource limit: {message}"
        elif isinstance(err, LiquidTypeError):
            message = f"type error: {message}"
        where = _where(self.leaf)
        if token is not None and token.source == self.text and token.start_index >= 0:
            line, column = self.position(token.start_index)
            lines = self.authored.splitlines() or [""]
            src_line = lines[min(line, len(lines)) - 1].strip()
            if len(src_line) > 120:
                src_line = src_line[:117] + "..."
            where = f"{where + ', ' if where else ''}line {line}, column {column}: `{src_line}`"
        text = f"{message} (at {where})" if where else message
        return TemplateRenderError(text, line=line, column=column, path=self.leaf)


# --- compile-time checks -------------------------------------------------------------------------


def _walk_expressions(expr: Expression) -> Iterator[Expression]:
    yield expr
    if isinstance(expr, TernaryFilteredExpression):
        yield from _walk_expressions(expr.left)
    for child in expr.children():
        yield from _walk_expressions(child)


def _filters_of(expr: Expression) -> Iterator[Filter]:
    if isinstance(expr, FilteredExpression | TernaryFilteredExpression) and expr.filters:
        yield from expr.filters
    if isinstance(expr, TernaryFilteredExpression) and expr.tail_filters:
        yield from expr.tail_filters


@functools.cache
def _signature(name: str) -> inspect.Signature:
    return inspect.signature(_ENV.filters[name])


def _check_filter(flt: Filter) -> str | None:
    """Why a filter call cannot work (unknown name, wrong arguments), or None."""
    func = _ENV.filters.get(flt.name)
    if func is None:
        close = difflib.get_close_matches(flt.name, _ENV.filters, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown filter '{flt.name}'{hint}"
    sig = _signature(flt.name)
    positional = [None for arg in flt.args if not isinstance(arg, KeywordArgument)]
    keywords: dict[str, object] = {
        arg.name: None for arg in flt.args if isinstance(arg, KeywordArgument)
    }
    if getattr(func, "with_context", False):
        keywords["context"] = None
    if getattr(func, "with_environment", False):
        keywords["environment"] = None
    try:
        sig.bind(None, *positional, **keywords)
    except TypeError as err:
        params = [
            p
            for p in list(sig.parameters.values())[1:]
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        required = sum(1 for p in params if p.default is p.empty)
        takes = (f"{required}" if required == len(params) else f"{required} to {len(params)}") + (
            " argument" if len(params) == 1 else " arguments"
        )
        return f"filter '{flt.name}' takes {takes}, got {len(flt.args or ())}: {err}"
    return None


def _compile(text: str, source: _Source) -> BoundTemplate:
    """Parse, re-class range literals to capped ones, and check every filter call."""
    try:
        template = _ENV.from_string(text)
    except LiquidError as err:
        index = err.token.start_index if err.token is not None else None
        raise source.syntax_error(str(err.message), index) from None
    static = RenderContext(template)

    def visit(node: Node) -> None:
        for expr in node.expressions():
            for sub in _walk_expressions(expr):
                if type(sub) is RangeLiteral:
                    sub.__class__ = _CappedRange
                for flt in _filters_of(sub):
                    problem = _check_filter(flt)
                    if problem:
                        raise source.syntax_error(problem, flt.token.start_index)
        for child in node.children(static, include_partials=False):
            visit(child)

    for node in template.nodes:
        visit(node)
    return template


# --- variables -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VariableRef:
    """One use of a context variable: its path (``("call", "externalId")``), its 1-based line and
    column, and, in a :class:`JsonTemplate`, the leaf holding it. A dynamic index (``a[b]``) ends
    the path."""

    path: tuple[str | int, ...]
    line: int
    column: int
    leaf_path: Leaf | None = None

    def __str__(self) -> str:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.path).lstrip(".")


def _variables(template: BoundTemplate, source: _Source) -> list[VariableRef]:
    refs: list[VariableRef] = []
    analysis = template.analyze(include_partials=False)
    for variables in analysis.globals.values():
        for var in variables:
            path: list[str | int] = []
            for segment in var.segments:
                if isinstance(segment, list):
                    break
                path.append(segment)
            line, column = source.position(var.span.index)
            refs.append(VariableRef(tuple(path), line, column, source.leaf))
    refs.sort(key=lambda r: (r.line, r.column))
    return refs


# --- rendering helpers ---------------------------------------------------------------------------


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


class _Render:
    """One render: the shared liquid context, the output budget and the time zone."""

    __slots__ = ("context", "remaining", "token")

    def __init__(self, context: Mapping[str, Any], timezone: str, source: _Source | None) -> None:
        try:
            tz = zone(timezone)
        except ValueError as err:
            raise TemplateRenderError(str(err), path=source.leaf if source else None) from None
        self.context = _Context(_ANCHOR, context)
        self.remaining = MAX_OUTPUT
        self.token = _STATE.set(_RenderState(tz))

    def close(self) -> None:
        _STATE.reset(self.token)

    def text(self, template: BoundTemplate) -> str:
        ctx = self.context
        buf = _Buffer(self.remaining)
        for node in template.nodes:
            try:
                node.render(ctx, buf)
            except LiquidError as err:
                if err.token is None:  # limits are raised without a position: use the statement's
                    err.token = node.token
                raise
            except LiquidInterrupt as err:
                raise LiquidError(
                    f"unexpected '{err}' outside a for loop", token=node.token
                ) from None
        if ctx.locals:  # each leaf is its own template: assigns do not leak into the next leaf
            ctx.locals.clear()
        self.remaining -= buf.size
        return buf.getvalue()


# --- the three template kinds --------------------------------------------------------------------


class _PydanticTemplate:
    """Pydantic integration: a field typed as the template accepts its source and compiles it."""

    _json_schema: ClassVar[dict[str, Any]] = {"type": "string"}

    def _source_value(self) -> Any:
        raise NotImplementedError

    @classmethod
    def _from_source(cls, value: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def _validate(cls, value: Any) -> Any:
        if isinstance(value, cls):
            return value
        try:
            return cls._from_source(value)
        except TemplateSyntaxError as err:
            raise PydanticCustomError(
                "template_syntax",
                "{message}",
                {
                    "message": err.message,
                    "line": err.line,
                    "column": err.column,
                    "path": list(err.path or ()),
                },
            ) from None

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda template: template._source_value(), when_used="always"
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return dict(cls._json_schema)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _PydanticTemplate)
        return bool(self._source_value() == other._source_value())

    def __hash__(self) -> int:
        return hash(
            (type(self).__name__, json.dumps(self._source_value(), sort_keys=True, default=str))
        )

    def __copy__(self) -> Any:
        return self  # immutable once compiled

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._source_value()!r})"


class TextTemplate(_PydanticTemplate):
    """A Liquid template producing text (URLs, headers, plain-text bodies).

    Compiles at construction: raises :class:`~cxbridge.errors.TemplateSyntaxError` with the 1-based
    line and column of the problem (bad syntax, unknown tag or filter, wrong filter arguments).
    """

    _json_schema: ClassVar[dict[str, Any]] = {"type": "string", "description": "Liquid template"}

    def __init__(self, source: str, *, _leaf: Leaf | None = None) -> None:
        if not isinstance(source, str):
            raise TemplateSyntaxError(
                f"a template must be a string, not {type(source).__name__}", path=_leaf
            )
        self.source = source
        self._src = _Source(source, _leaf)
        self._template = _compile(source, self._src)

    def _source_value(self) -> Any:
        return self.source

    @classmethod
    def _from_source(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise PydanticCustomError("string_type", "Input should be a valid string")
        return cls(value)

    def render(self, context: Mapping[str, Any], *, timezone: str = "UTC") -> str:
        """Render with ``context`` (usually ``event.template_context(timezone)``); ``date`` formats
        in ``timezone``. Raises :class:`~cxbridge.errors.TemplateRenderError`."""
        run = _Render(context, timezone, self._src)
        try:
            return run.text(self._template)
        except (LiquidError, ArithmeticError, ValueError, TypeError) as err:
            raise self._src.render_error(err) from None
        finally:
            run.close()

    def _render_in(self, run: _Render) -> str:
        try:
            return run.text(self._template)
        except (LiquidError, ArithmeticError, ValueError, TypeError) as err:
            raise self._src.render_error(err) from None

    def variables(self) -> list[VariableRef]:
        """Every use of a context variable (loop variables, assigns excluded), in source order."""
        return _variables(self._template, self._src)


# JSON documents compile to a small tree of nodes; rendering walks it.


class _Const:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def render(self, run: _Render) -> Any:
        return self.value


class _Typed:
    """A leaf that is exactly ``{{ expr }}``: the expression's value, type kept."""

    __slots__ = ("expression", "src", "template")

    def __init__(self, template: TextTemplate, expression: Expression) -> None:
        self.template = template
        self.expression = expression
        self.src = template._src

    def render(self, run: _Render) -> Any:
        try:
            return _to_json(self.expression.evaluate(run.context), self.src)
        except (LiquidError, ArithmeticError, ValueError, TypeError) as err:
            raise self.src.render_error(err) from None


class _Text:
    __slots__ = ("template",)

    def __init__(self, template: TextTemplate) -> None:
        self.template = template

    def render(self, run: _Render) -> Any:
        return self.template._render_in(run)


class _List:
    __slots__ = ("items",)

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def render(self, run: _Render) -> Any:
        return [item.render(run) for item in self.items]


class _Dict:
    __slots__ = ("items",)

    def __init__(self, items: list[tuple[Any, Any]]) -> None:
        self.items = items

    def render(self, run: _Render) -> Any:
        return {key.render(run): value.render(run) for key, value in self.items}


def _is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def _compile_document(document: Any, leaf: Leaf, templates: list[TextTemplate]) -> Any:
    if isinstance(document, str):
        if not _is_template(document):
            return _Const(document)
        template = TextTemplate(document, _leaf=leaf)
        templates.append(template)
        outputs = [node for node in template._template.nodes if isinstance(node, OutputNode)]
        others = [node for node in template._template.nodes if not isinstance(node, OutputNode)]
        stripped = document.strip()
        if (
            len(outputs) == 1
            and all(isinstance(node, ContentNode) and node.blank for node in others)
            and stripped.startswith("{{")
            and stripped.endswith("}}")
        ):
            return _Typed(template, outputs[0].expression)
        return _Text(template)
    if isinstance(document, bool) or document is None or isinstance(document, int):
        return _Const(document)
    if isinstance(document, float):
        if not math.isfinite(document):
            raise TemplateSyntaxError(f"{document} is not a JSON number", path=leaf)
        return _Const(document)
    if isinstance(document, dt.date):  # YAML timestamps
        return _Const(document.isoformat())
    if isinstance(document, list | tuple):
        return _List(
            [_compile_document(item, (*leaf, i), templates) for i, item in enumerate(document)]
        )
    if isinstance(document, Mapping):
        items: list[tuple[Any, Any]] = []
        for key, value in document.items():
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise TemplateSyntaxError(
                    f"a JSON key must be a string, not {type(key).__name__}", path=leaf
                )
            text_key = key if isinstance(key, str) else json.dumps(key)
            if _is_template(text_key):
                key_template = TextTemplate(text_key, _leaf=(*leaf, text_key))
                templates.append(key_template)
                key_node: Any = _Text(key_template)
            else:
                key_node = _Const(text_key)
            items.append((key_node, _compile_document(value, (*leaf, text_key), templates)))
        return _Dict(items)
    raise TemplateSyntaxError(f"a JSON document cannot hold a {type(document).__name__}", path=leaf)


_json_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class JsonTemplate(_PydanticTemplate):
    """A JSON document (dict / list / scalars, e.g. from YAML) whose string leaves are Liquid.

    A leaf that is exactly one output statement (``"{{ qi.score }}"``, filters allowed, surrounding
    whitespace ignored) keeps the value's type; any other template leaf renders to a string; strings
    without ``{{``/``{%`` are taken as they are. Keys may be templates too and always stay strings.
    Leaves do not share ``assign``s; limits hold for the document as a whole.
    """

    _json_schema: ClassVar[dict[str, Any]] = {
        "description": "JSON document whose string leaves are Liquid templates"
    }

    def __init__(self, document: Any) -> None:
        self.document = document
        self._templates: list[TextTemplate] = []
        self._root = _compile_document(document, (), self._templates)

    def _source_value(self) -> Any:
        return self.document

    @classmethod
    def _from_source(cls, value: Any) -> Any:
        return cls(value)

    def render(self, context: Mapping[str, Any], *, timezone: str = "UTC") -> Any:
        """Render to a Python value (dicts, lists, str, int, float, bool, None)."""
        run = _Render(context, timezone, None)
        try:
            return self._root.render(run)
        finally:
            run.close()

    def render_bytes(self, context: Mapping[str, Any], *, timezone: str = "UTC") -> bytes:
        """Render to compact JSON, UTF-8. U+2028/U+2029 are escaped so the body is also valid JS."""
        text = _json_encoder.encode(self.render(context, timezone=timezone))
        if "\u2028" in text or "\u2029" in text:
            text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        return text.encode()

    def variables(self) -> list[VariableRef]:
        """Every use of a context variable, leaf by leaf in document order."""
        return [ref for template in self._templates for ref in template.variables()]


class Condition(_PydanticTemplate):
    """One Liquid boolean expression (``qi.score > 85 and call.direction == "inbound"``).

    ``and``, ``or``, ``not``, parentheses, ``==``, ``!=``, ``<``, ``>``, ``<=``, ``>=`` and
    ``contains`` work; a missing variable is falsy (a condition on ``qi`` does not match a
    call_create).
    """

    _json_schema: ClassVar[dict[str, Any]] = {
        "type": "string",
        "description": "Liquid boolean expression",
    }
    _PREFIX: ClassVar[str] = "{% if "

    def __init__(self, expression: str) -> None:
        if not isinstance(expression, str):
            raise TemplateSyntaxError(
                f"a condition must be a string, not {type(expression).__name__}"
            )
        if not expression.strip():
            raise TemplateSyntaxError("a condition cannot be empty", line=1, column=1)
        for marker in ("{{", "}}", "{%", "%}"):
            if marker in expression:
                line, column = _line_col(expression, expression.index(marker))
                raise TemplateSyntaxError(
                    f"a condition is one expression, without '{marker}': "
                    "write `qi.score > 85`, not `{% if qi.score > 85 %}`",
                    line=line,
                    column=column,
                )
        self.expression = expression
        text = f"{self._PREFIX}{expression} %}}1{{% endif %}}"
        end = len(self._PREFIX) + len(expression)
        self._src = _Source(text, None, offset=len(self._PREFIX), end=end)
        self._template = _compile(text, self._src)
        nodes = self._template.nodes
        node = nodes[0] if len(nodes) == 1 else None
        if not isinstance(node, IfNode) or node.alternatives or node.default:
            raise TemplateSyntaxError(
                "a condition is one expression, without {% %} or {{ }}", line=1, column=1
            )
        self._condition = node.condition

    def _source_value(self) -> Any:
        return self.expression

    @classmethod
    def _from_source(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise PydanticCustomError("string_type", "Input should be a valid string")
        return cls(value)

    def matches(self, context: Mapping[str, Any], *, timezone: str = "UTC") -> bool:
        """Whether the condition holds for ``context``; TemplateRenderError for ``"90" > 85``."""
        run = _Render(context, timezone, self._src)
        try:
            return bool(self._condition.evaluate(run.context))
        except (LiquidError, ArithmeticError, ValueError, TypeError) as err:
            raise self._src.render_error(err) from None
        finally:
            run.close()

    def variables(self) -> list[VariableRef]:
        """Every use of a context variable, with line and column inside the expression."""
        return _variables(self._template, self._src)


# --- checking variables against the event models -------------------------------------------------

_ANY = "any"
_SCALAR = "scalar"
_STRING = "string"
# Liquid's own names, always there.
_BUILTIN_ROOTS = frozenset({"now", "today", "empty", "blank", "nil", "null", "true", "false"})
_FREE_ROOTS = frozenset({"destination"})  # added by the router; its keys are the destination's own


class _Shape:
    """What a context value looks like: a model's fields, a list's items, a scalar."""

    __slots__ = ("fields", "item", "kind")

    def __init__(
        self, kind: str, fields: dict[str, _Shape] | None = None, item: _Shape | None = None
    ) -> None:
        self.kind = kind
        self.fields = fields
        self.item = item


def _shape_of(annotation: Any, seen: dict[type, _Shape]) -> _Shape:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _shape_of(typing.get_args(annotation)[0], seen)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        shapes = [_shape_of(a, seen) for a in options]
        for shape in shapes:
            if shape.kind in ("model", "list"):
                return shape
        return shapes[0] if len(shapes) == 1 else _Shape(_SCALAR)
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple):
        args = typing.get_args(annotation)
        return _Shape("list", item=_shape_of(args[0], seen) if args else _Shape(_ANY))
    if origin in (dict, Mapping) or annotation in (dict, Any) or annotation is typing.Any:
        return _Shape(_ANY)
    if origin is typing.Literal or annotation is str:
        return _Shape(_STRING)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_shape(annotation, seen)
    return _Shape(_SCALAR)


def _model_shape(model: type[BaseModel], seen: dict[type, _Shape]) -> _Shape:
    if model in seen:
        return seen[model]
    shape = _Shape("model", fields={})
    seen[model] = shape
    assert shape.fields is not None
    for name, field in model.model_fields.items():
        shape.fields[field.alias or name] = _shape_of(field.annotation, seen)
    return shape


@functools.cache
def _event_shape(event_type: str) -> _Shape:
    from cxbridge.events import EVENT_TYPES

    shape = _model_shape(EVENT_TYPES[event_type], {})
    assert shape.fields is not None
    envelope = ("id", "type", "version", "occurredAt", "tenant")
    fields = dict(shape.fields)
    fields["event"] = _Shape("model", fields={k: shape.fields[k] for k in envelope})
    for root in _FREE_ROOTS:
        fields[root] = _Shape(_ANY)
    return _Shape("model", fields=fields)


def _resolve(shape: _Shape, path: tuple[str | int, ...]) -> tuple[int, list[str]] | None:
    """None if ``path`` exists in ``shape``; else how far it got and the names that fit there."""
    for depth, segment in enumerate(path):
        if shape.kind == _ANY:
            return None
        if segment == "size" and shape.kind in ("list", _STRING, "model"):
            return None if depth == len(path) - 1 else (depth + 1, [])
        if shape.kind == "list":
            assert shape.item is not None
            if isinstance(segment, int) or segment in ("first", "last"):
                shape = shape.item
                continue
            return depth, ["first", "last", "size"]
        if shape.kind == "model":
            assert shape.fields is not None
            if isinstance(segment, str) and segment in shape.fields:
                shape = shape.fields[segment]
                continue
            return depth, list(shape.fields or ())
        return depth, ["size"] if shape.kind == _STRING else []
    return None


def _dotted(path: Iterable[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def check_variables(
    template: TextTemplate | JsonTemplate | Condition, event_types: Iterable[str]
) -> list[TemplateSyntaxError]:
    """Check every variable a template uses against the event models of ``event_types``.

    A path is unknown when none of the given event types has it (wire names: ``call.externalId``).
    ``event.*`` (the envelope), ``tenant`` and ``destination.*`` are always there; loop variables
    and assigns are the template's own. Each error carries line, column and (in a JsonTemplate) the
    leaf ``path``, and suggests a close name where there is one.
    """
    types_ = sorted(set(event_types))
    shapes = [_event_shape(t) for t in types_]
    errors: list[TemplateSyntaxError] = []
    for ref in template.variables():
        if not ref.path or ref.path[0] in _BUILTIN_ROOTS:
            continue
        misses = [_resolve(shape, ref.path) for shape in shapes]
        if not shapes or any(miss is None for miss in misses):
            continue
        depth = max(miss[0] for miss in misses if miss is not None)
        candidates = sorted(
            {name for miss in misses if miss is not None and miss[0] == depth for name in miss[1]}
        )
        known = _dotted(ref.path[:depth])
        wrong = ref.path[depth] if depth < len(ref.path) else ""
        message = f"unknown variable '{_dotted(ref.path)}': not in {' or '.join(types_)} events"
        close = difflib.get_close_matches(str(wrong), candidates, n=1, cutoff=0.6)
        if close:
            message += f"; did you mean '{_dotted((*ref.path[:depth], close[0]))}'?"
        elif candidates == ["size"]:
            message += f"; '{known}' is text"
        elif candidates:
            message += f"; {'names here' if not depth else repr(known) + ' has'}: " + ", ".join(
                candidates[:15]
            )
        elif depth:
            message += f"; '{known}' is a plain value"
        errors.append(
            TemplateSyntaxError(message, line=ref.line, column=ref.column, path=ref.leaf_path)
        )
    return errors

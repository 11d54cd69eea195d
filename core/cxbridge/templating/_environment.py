"""The Liquid environment every template compiles in (strict, no partials, guarded filters,
capped ranges, loop and output limits), and one render's context on it."""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from typing import Any

from liquid import BoundTemplate, Environment, FalsyStrictUndefined, Mode, RenderContext
from liquid.builtin.expressions.primitive import RangeLiteral
from liquid.exceptions import LiquidError, LiquidInterrupt, OutputStreamLimitError
from liquid.output import LimitedStringIO

from cxbridge.errors import TemplateRenderError
from cxbridge.templating._filters import _date, _guard, _json
from cxbridge.templating._limits import (
    _MAX_LOCALS,
    _STATE,
    MAX_ITEMS,
    MAX_LOOP_ITERATIONS,
    MAX_OUTPUT,
    _RangeTooLarge,
    _RenderState,
    _TotalLoopLimit,
    zone,
)

if typing.TYPE_CHECKING:
    from liquid.ast import Node

    from cxbridge.templating._source import _Source

__all__ = ["_ANCHOR", "_ENV", "_CappedRange", "_Render"]

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


def _output_limit() -> OutputStreamLimitError:
    return OutputStreamLimitError(
        f"output limit reached ({MAX_OUTPUT:,} characters per render)", token=None
    )


class _Buffer(LimitedStringIO):
    """Output buffer counting characters (cheaper than liquid's UTF-8 byte count)."""

    def write(self, s: str, /) -> int:
        if s:
            self.size += len(s)
            if self.size > self.limit:
                raise _output_limit()
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


# --- one render ----------------------------------------------------------------------------------


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
        return self.write(template.nodes)

    def write(self, nodes: Sequence[Node]) -> str:
        """Render ``nodes`` (a template's, or some of them) to text, within the output budget."""
        ctx = self.context
        buf = _Buffer(self.remaining)
        for node in nodes:
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

    def spend(self, size: int) -> None:
        """Count ``size`` characters written outside a buffer (a typed leaf's value as JSON)."""
        self.remaining -= size
        if self.remaining < 0:
            raise _output_limit()

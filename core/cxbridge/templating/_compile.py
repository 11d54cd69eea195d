"""Compile-time checks: parse a template, cap its range literals, and refuse unknown filters and
wrong filter arguments with the position of the call."""

from __future__ import annotations

import difflib
import functools
import inspect
import typing
from collections.abc import Iterator

from liquid import BoundTemplate, RenderContext
from liquid.builtin.expressions import FilteredExpression, TernaryFilteredExpression
from liquid.builtin.expressions.arguments import KeywordArgument
from liquid.builtin.expressions.filtered import Filter
from liquid.builtin.expressions.primitive import RangeLiteral
from liquid.exceptions import LiquidError
from liquid.expression import Expression

from cxbridge.templating._environment import _ENV, _CappedRange
from cxbridge.templating._source import _Source

if typing.TYPE_CHECKING:
    from liquid.ast import Node

__all__ = ["_compile"]


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


# Filters whose Python signature has a default where leaving the argument out silently loses text
# (`truncate` cuts at 50 characters, `replace: 'a'` deletes every 'a'): their arguments are
# required, with what to write instead.
_REQUIRED_ARGS = {
    "truncate": (1, "`| truncate: 50`"),
    "truncatewords": (1, "`| truncatewords: 15`"),
    "replace": (2, "`| replace: 'old', 'new'` (`| remove: 'old'` deletes)"),
    "replace_first": (2, "`| replace_first: 'old', 'new'` (`| remove_first: 'old'` deletes)"),
    "replace_last": (2, "`| replace_last: 'old', 'new'` (`| remove_last: 'old'` deletes)"),
}


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
    required, example = _REQUIRED_ARGS.get(flt.name, (0, ""))
    if len(positional) < required:
        return (
            f"filter '{flt.name}' takes at least {required} argument{'s' if required > 1 else ''}, "
            f"got {len(positional)}: write {example}"
        )
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

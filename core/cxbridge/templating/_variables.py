"""Variable analysis: every context variable a template uses (:class:`VariableRef`), and
:func:`check_variables`, which checks them against the event models."""

from __future__ import annotations

import difflib
import functools
import itertools
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from liquid import BoundTemplate, RenderContext
from liquid.ast import Node
from liquid.builtin.expressions import FilteredExpression, Path
from liquid.builtin.expressions.primitive import RangeLiteral
from liquid.builtin.tags.case_tag import CaseNode
from liquid.builtin.tags.for_tag import ForNode
from liquid.builtin.tags.if_tag import IfNode
from liquid.builtin.tags.tablerow_tag import TablerowNode
from liquid.builtin.tags.unless_tag import UnlessNode
from liquid.expression import Expression
from pydantic import BaseModel

from cxbridge.errors import TemplateSyntaxError
from cxbridge.templating._source import Leaf, _Source

if typing.TYPE_CHECKING:
    from cxbridge.templating._document import JsonTemplate
    from cxbridge.templating._templates import Condition, TextTemplate

__all__ = ["VariableRef", "_variables", "check_variables"]


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


def _static_prefix(segments: Iterable[Any], dynamic: type) -> tuple[str | int, ...]:
    """The leading segments of a variable path up to its first dynamic one (``a[b].c`` → ``a``)."""
    return tuple(itertools.takewhile(lambda segment: not isinstance(segment, dynamic), segments))


def _variables(template: BoundTemplate, source: _Source) -> list[VariableRef]:
    refs: list[VariableRef] = []
    analysis = template.analyze(include_partials=False)
    for variables in analysis.globals.values():
        for var in variables:
            line, column = source.position(var.span.index)
            path = _static_prefix(var.segments, list)
            refs.append(VariableRef(path, line, column, source.leaf))
    refs.sort(key=lambda r: (r.line, r.column))
    return refs


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


def _follow(shape: _Shape, path: tuple[str | int, ...]) -> _Shape | tuple[int, list[str]]:
    """The shape at ``path`` in ``shape``; else how far it got and the names that fit there."""
    for depth, segment in enumerate(path):
        if shape.kind == _ANY:
            return shape
        if segment == "size" and shape.kind in ("list", _STRING, "model"):
            return _Shape(_SCALAR) if depth == len(path) - 1 else (depth + 1, [])
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
    return shape


def _resolve(shape: _Shape, path: tuple[str | int, ...]) -> tuple[int, list[str]] | None:
    """None if ``path`` exists in ``shape``; else how far it got and the names that fit there."""
    found = _follow(shape, path)
    return None if isinstance(found, _Shape) else found


def _items(shape: _Shape) -> _Shape:
    """What a ``for`` over a value of ``shape`` binds its variable to, one item at a time."""
    if shape.kind == "list":
        assert shape.item is not None
        return shape.item
    if shape.kind == _STRING:  # a string loops once, as itself
        return shape
    return _Shape(_ANY)  # a model loops over [key, value] pairs; a number or bool not at all


# --- loop variables: what a `for` binds its name to ----------------------------------------------


class _Each:
    """A step into the items of a list, in :attr:`_Loop.steps`."""

    __slots__ = ()


_EACH = _Each()


@dataclass(frozen=True, slots=True)
class _Loop:
    """A loop variable: an item of ``source`` (the iterable as written). ``steps`` is the
    iterable's path from the event, ``_EACH`` stepping into the items of an outer loop's list and,
    last, of this one; ``None`` for a range (its items are numbers)."""

    source: str
    steps: tuple[str | int | _Each, ...] | None

    def item_shape(self, event: _Shape) -> _Shape | None:
        """The shape of one item in ``event``; None if the iterable is not in it."""
        if self.steps is None:
            return _Shape(_SCALAR)
        shape, chunk = event, list[str | int]()
        for step in self.steps:
            if not isinstance(step, _Each):
                chunk.append(step)
                continue
            found = _follow(shape, tuple(chunk))
            if not isinstance(found, _Shape):
                return None
            shape, chunk = _items(found), []
        return shape


def _loop_variables(template: BoundTemplate, source: _Source) -> list[tuple[VariableRef, _Loop]]:
    """Every use of a ``for``/``tablerow`` variable inside its loop, with what it loops over.

    Names resolve as Liquid does at render time: the innermost loop first, then assigns, then the
    context. ``forloop``, ``tablerowloop``, a loop's ``else`` block and loops over an assign, a
    literal or a dynamic index are not followed (their variables stay the template's own).
    """
    found: list[tuple[VariableRef, _Loop]] = []
    frames: list[dict[str, _Loop | None]] = []
    assigned: set[str] = set()
    static_context = RenderContext(template)

    def bound(name: object) -> tuple[bool, _Loop | None]:
        """Whether ``name`` is a block's own (a loop variable, ``forloop``), and its loop."""
        for frame in reversed(frames):
            if isinstance(name, str) and name in frame:
                return True, frame[name]
        return False, None

    def binding(iterable: Expression) -> _Loop | None:
        if isinstance(iterable, RangeLiteral):
            return _Loop(str(iterable), None)
        if not isinstance(iterable, Path):
            return None
        path = [segment for segment in iterable.path if not isinstance(segment, Path)]
        if len(path) != len(iterable.path):  # a dynamic index: its items are unknown
            return None
        in_loop, outer = bound(path[0])
        if in_loop:
            if outer is None or outer.steps is None:
                return None
            return _Loop(str(iterable), (*outer.steps, *path[1:], _EACH))
        if path[0] in assigned:
            return None
        return _Loop(str(iterable), (*path, _EACH))

    def expression(expr: Expression) -> None:
        if isinstance(expr, Path):
            loop = bound(expr.path[0])[1]
            if loop is not None:
                line, column = source.position(expr.token.start_index)
                path = _static_prefix(expr.path, Path)
                found.append((VariableRef(path, line, column, source.leaf), loop))
        names = [str(name) for name in expr.scope()]
        if names:
            frames.append(dict.fromkeys(names))
        for child in expr.children():
            expression(child)
        if names:
            frames.pop()

    def visit(node: Node) -> None:
        for expr in node.expressions():
            expression(expr)
        assigned.update(str(name) for name in node.template_scope())
        names = [str(name) for name in node.block_scope()]
        frame: dict[str, _Loop | None] = dict.fromkeys(names)
        if isinstance(node, ForNode | TablerowNode):
            loop = binding(node.expression.iterable)
            frame[node.expression.identifier] = loop
        for child in node.children(static_context, include_partials=False):
            in_block = isinstance(node, ForNode | TablerowNode) and child is node.block
            frames.append(frame if in_block else dict.fromkeys(names))
            visit(child)
            frames.pop()

    for node in template.nodes:
        visit(node)
    return found


def _dotted(path: Iterable[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def check_variables(
    template: TextTemplate | JsonTemplate | Condition, event_types: Iterable[str]
) -> list[TemplateSyntaxError]:
    """Check every variable a template uses against the event models of ``event_types``.

    A path is unknown when none of the given event types has it (wire names: ``call.externalId``).
    ``event.*`` (the envelope), ``tenant`` and ``destination.*`` are always there; assigns are the
    template's own. A loop variable is checked as an item of what it loops over (``r.score`` in
    ``{% for r in qi.rubric %}``: a RubricItem field); ``forloop`` is Liquid's. Each error carries
    line, column and (in a JsonTemplate) the leaf ``path``, and suggests a close name where there
    is one.
    """
    types_ = sorted(set(event_types))
    shapes = [_event_shape(t) for t in types_]
    errors: list[TemplateSyntaxError] = []
    if not shapes:
        return errors
    for part in _parts(template):
        refs: list[tuple[VariableRef, _Loop | None]] = [
            (ref, None) for ref in _variables(part._template, part._src)
        ]
        refs += _loop_variables(part._template, part._src)
        refs.sort(key=lambda item: (item[0].line, item[0].column))
        # A condition treats a missing value as false; elsewhere it fails the render.
        guarded = None if _is_condition(part) else _guarded(part._template, part._src)
        for ref, loop in refs:
            error = _check(ref, loop, types_, shapes)
            if error is None and guarded is not None and (ref.line, ref.column) not in guarded:
                error = _check_each_type(ref, loop, types_, shapes)
            if error is not None:
                errors.append(error)
    return errors


def _check_each_type(
    ref: VariableRef, loop: _Loop | None, types_: list[str], shapes: list[_Shape]
) -> TemplateSyntaxError | None:
    """An unguarded use of a variable that some subscribed event types lack: every delivery of
    those types would fail to render, so it is an error at load, naming them."""
    lacking = [
        t for t, shape in zip(types_, shapes, strict=True) if _check(ref, loop, [t], [shape])
    ]
    if not lacking:
        return None
    message = (
        f"'{ref}' is not in {' or '.join(lacking)} events, which this destination also gets; "
        f"guard it ({{% if {ref} %}} or | default: ...) or subscribe only to events that have it"
    )
    return TemplateSyntaxError(message, line=ref.line, column=ref.column, path=ref.leaf_path)


def _is_condition(part: TextTemplate | Condition) -> bool:
    from cxbridge.templating._templates import Condition

    return isinstance(part, Condition)


_GUARDS = (IfNode, UnlessNode, CaseNode)


def _guarded(template: BoundTemplate, source: _Source) -> set[tuple[int, int]]:
    """Positions of the variables that render safely when missing: inside an ``if`` / ``unless``
    / ``case`` block (or its condition), or whose first filter is ``default``."""
    positions: set[tuple[int, int]] = set()
    context = RenderContext(template)

    def visit(expression: Expression, guarded: bool) -> None:
        if isinstance(expression, FilteredExpression) and expression.filters:
            # Only a first `default` sees the missing value; `upcase` before it fails already.
            guarded = guarded or expression.filters[0].name == "default"
        if guarded and isinstance(expression, Path):
            positions.add(source.position(expression.token.start_index))
        for child in expression.children():
            visit(child, guarded)

    def walk(node: Node, guarded: bool) -> None:
        guarded = guarded or isinstance(node, _GUARDS)
        for expression in node.expressions():
            visit(expression, guarded)
        for child in node.children(context, include_partials=False):
            walk(child, guarded)

    for node in template.nodes:
        walk(node, False)
    return positions


def _parts(template: TextTemplate | JsonTemplate | Condition) -> list[TextTemplate | Condition]:
    from cxbridge.templating._document import JsonTemplate

    return list(template._templates) if isinstance(template, JsonTemplate) else [template]


def _check(
    ref: VariableRef, loop: _Loop | None, types_: list[str], shapes: list[_Shape]
) -> TemplateSyntaxError | None:
    """The error for ``ref`` (a loop variable's, if ``loop``), or None if some event has it."""
    if loop is None:
        if not ref.path or ref.path[0] in _BUILTIN_ROOTS:
            return None
        starts, path, offset = shapes, ref.path, 0
    else:  # `r.scor` in a loop over `qi.rubric`: `scor` in the items of qi.rubric
        starts = [s for s in (loop.item_shape(shape) for shape in shapes) if s is not None]
        if not starts:  # the iterable is in no event: reported on its own
            return None
        path, offset = ref.path[1:], 1
    misses = [_resolve(shape, path) for shape in starts]
    if any(miss is None for miss in misses):
        return None
    depth = offset + max(miss[0] for miss in misses if miss is not None)
    candidates = sorted(
        {
            name
            for miss in misses
            if miss is not None and offset + miss[0] == depth
            for name in miss[1]
        }
    )
    known = _dotted(ref.path[:depth])
    wrong = ref.path[depth] if depth < len(ref.path) else ""
    message = f"unknown variable '{_dotted(ref.path)}'"
    if loop is not None:
        message += f" ({ref.path[0]} is an item of {loop.source})"
    message += f": not in {' or '.join(types_)} events"
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
    return TemplateSyntaxError(message, line=ref.line, column=ref.column, path=ref.leaf_path)

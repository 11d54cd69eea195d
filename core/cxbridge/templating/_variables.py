"""Variable analysis: every context variable a template uses (:class:`VariableRef`), and
:func:`check_variables`, which checks them against the event models."""

from __future__ import annotations

import difflib
import functools
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from liquid import BoundTemplate
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

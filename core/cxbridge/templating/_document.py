"""JSON-first rendering: :class:`JsonTemplate`, a JSON document compiled to a small tree of nodes
whose typed leaves keep their value's type; the JSON encoder does all escaping."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from json.encoder import encode_basestring
from typing import Any, ClassVar

from liquid.builtin.content import ContentNode
from liquid.builtin.output import OutputNode
from liquid.exceptions import LiquidError
from liquid.expression import Expression

from cxbridge.errors import TemplateRenderError, TemplateSyntaxError
from cxbridge.templating._environment import _Render
from cxbridge.templating._filters import _to_json
from cxbridge.templating._limits import MAX_OUTPUT
from cxbridge.templating._pydantic import _PydanticTemplate
from cxbridge.templating._source import Leaf
from cxbridge.templating._templates import TextTemplate
from cxbridge.templating._variables import VariableRef

__all__ = ["JsonTemplate"]

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
            value = _to_json(self.expression.evaluate(run.context), self.src)
            # The value is written as it is, not through an output buffer: count it here.
            run.spend(_json_length(value, run.remaining))
        except (LiquidError, ArithmeticError, ValueError, TypeError) as err:
            raise self.src.render_error(err) from None
        return value


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


def _json_length(value: Any, limit: int) -> int:
    """Characters of ``value`` as compact JSON, counted only until they pass ``limit``: a typed
    leaf may hold one large string many times over, and counting must not cost what writing it
    would."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(encode_basestring(item))
        elif isinstance(item, dict):
            total += 2 + max(len(item) - 1, 0) + len(item)  # braces, commas, colons
            total += sum(len(encode_basestring(key)) for key in item)
            stack.extend(item.values())
        elif isinstance(item, list):
            total += 2 + max(len(item) - 1, 0)
            stack.extend(item)
        else:
            total += len(json.dumps(item))
    return total


def _is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def _compile_document(
    document: Any, leaf: Leaf, templates: list[TextTemplate], errors: list[TemplateSyntaxError]
) -> Any:
    """Compile every leaf; a broken one is recorded in ``errors`` and compiling goes on."""
    try:
        return _compile_node(document, leaf, templates, errors)
    except TemplateSyntaxError as err:
        errors.append(err)
        return _Const(None)


def _compile_node(
    document: Any, leaf: Leaf, templates: list[TextTemplate], errors: list[TemplateSyntaxError]
) -> Any:
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
            [
                _compile_document(item, (*leaf, i), templates, errors)
                for i, item in enumerate(document)
            ]
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
            items.append((key_node, _compile_document(value, (*leaf, text_key), templates, errors)))
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
        errors: list[TemplateSyntaxError] = []
        self._root = _compile_document(document, (), self._templates, errors)
        if errors:
            first, *rest = errors
            first.more = tuple(rest)
            raise first

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
        """Render to compact JSON, UTF-8. U+2028/U+2029 are escaped so the body is also valid JS.

        The JSON text, every leaf counted (typed ones too, static ones too), is at most
        :data:`MAX_OUTPUT` characters; over that, :class:`~cxbridge.errors.TemplateRenderError`.
        """
        text = _json_encoder.encode(self.render(context, timezone=timezone))
        if "\u2028" in text or "\u2029" in text:
            text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        if len(text) > MAX_OUTPUT:
            raise TemplateRenderError(
                f"resource limit: output limit reached ({MAX_OUTPUT:,} characters per render): "
                f"the body is {len(text):,} characters of JSON"
            )
        return text.encode()

    def variables(self) -> list[VariableRef]:
        """Every use of a context variable, leaf by leaf in document order."""
        return [ref for template in self._templates for ref in template.variables()]

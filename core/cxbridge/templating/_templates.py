"""The single-string templates: :class:`TextTemplate` (text out) and :class:`Condition` (one
boolean expression), each compiled once and rendered many times."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from liquid.builtin.tags.if_tag import IfNode
from liquid.exceptions import LiquidError
from pydantic_core import PydanticCustomError

from cxbridge.errors import TemplateSyntaxError
from cxbridge.templating._compile import _compile
from cxbridge.templating._environment import _Render
from cxbridge.templating._pydantic import _PydanticTemplate
from cxbridge.templating._source import Leaf, _line_col, _Source
from cxbridge.templating._variables import VariableRef, _variables

__all__ = ["Condition", "TextTemplate"]


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

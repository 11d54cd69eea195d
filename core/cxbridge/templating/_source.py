"""A template's source text: line and column of a position in the author's text, and liquid's
errors turned into cxbridge's :class:`TemplateSyntaxError` / :class:`TemplateRenderError`."""

from __future__ import annotations

from typing import TypeAlias

from liquid.exceptions import (
    LiquidError,
    LiquidTypeError,
    LocalNamespaceLimitError,
    LoopIterationLimitError,
    OutputStreamLimitError,
    ResourceLimitError,
    UndefinedError,
)

from cxbridge.errors import TemplateRenderError, TemplateSyntaxError
from cxbridge.templating._limits import (
    MAX_LOOP_ITERATIONS,
    MAX_OUTPUT,
    _LimitExceeded,
    _TotalLoopLimit,
)

__all__ = ["Leaf", "_Source", "_line_col"]

Leaf: TypeAlias = tuple[str | int, ...]


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

"""URL templates: the scheme and host are written out, every value from data is percent-encoded."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote, quote_plus, unquote, urlsplit

from liquid.builtin.content import ContentNode
from liquid.builtin.expressions import FilteredExpression
from liquid.builtin.output import OutputNode
from liquid.exceptions import LiquidError

from cxbridge.errors import TemplateRenderError
from cxbridge.templating._environment import _Render
from cxbridge.templating._limits import MAX_URL
from cxbridge.templating._source import Leaf
from cxbridge.templating._templates import TextTemplate

__all__ = ["UrlTemplate"]

# What must be written out before the first {{ }}: scheme, "://", the whole authority, and the
# character that ends it.
_STATIC_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]+[/?#]")
_ENCODING_FILTERS = ("url_encode", "url_escape", "uri_encode", "uri_escape")


def _path_value(text: str) -> str:
    return quote(text, safe="")


def _query_value(text: str) -> str:
    return quote_plus(text, safe="")


_ENCODERS = {"path": _path_value, "query": _query_value, "fragment": _path_value}


def _part_after(text: str, part: str) -> str:
    """The part of a URL (path, query, fragment) after static ``text`` that starts in ``part``."""
    if "#" in text:
        return "fragment"
    return "query" if part == "path" and "?" in text else part


class UrlTemplate(TextTemplate):
    """A Liquid template of a URL, safe against the data it renders.

    * The scheme and host (with port and user info) are static: a ``{{ }}`` before the ``/``, ``?``
      or ``#`` that ends the host is refused when the template compiles, so the host can never come
      from data.
    * Each ``{{ }}`` value is percent-encoded for where it stands: in the path and the fragment as
      one segment (``quote(value, safe="")``: ``/`` becomes ``%2F``), after the first ``?`` like a
      form value (``quote_plus``: ``&`` becomes ``%26``, a space ``+``). Do not add ``url_encode``
      yourself (refused: it would encode twice).
    * A rendered path with a ``.`` or ``..`` segment, or a URL over :data:`MAX_URL` characters, is
      refused when rendering.
    * Only ``{{ }}`` outputs; ``{% %}`` tags are refused (write ``| default:`` for alternatives).
    """

    _json_schema: ClassVar[dict[str, Any]] = {
        "type": "string",
        "description": "Liquid template of a URL; the scheme and host are static, values encoded",
    }

    def __init__(self, source: str, *, _leaf: Leaf | None = None) -> None:
        super().__init__(source, _leaf=_leaf)
        self._encoders: list[Any] = []  # one per node: None for static text, else the encoder
        static = ""
        part = "path"
        seen_output = False
        for node in self._template.nodes:
            if isinstance(node, ContentNode):
                part = _part_after(node.text, part)
                if not seen_output:
                    static += node.text
                self._encoders.append(None)
                continue
            if not isinstance(node, OutputNode):
                raise self._src.syntax_error(
                    "a url takes {{ }} values only, not {% %} tags; write alternatives as "
                    "`{{ a | default: b }}`",
                    node.token.start_index,
                )
            if not seen_output and not _STATIC_ORIGIN.match(static):
                raise self._src.syntax_error(
                    "the scheme and host of a url must be written out, not come from a template: "
                    "start with e.g. `https://hooks.example.com/` and put {{ }} only after it",
                    node.token.start_index,
                )
            seen_output = True
            expression = node.expression
            if isinstance(expression, FilteredExpression) and expression.filters:
                last = expression.filters[-1]
                if last.name in _ENCODING_FILTERS:
                    raise self._src.syntax_error(
                        f"values in a url are percent-encoded for you; remove `| {last.name}` "
                        "(it would encode them twice)",
                        last.token.start_index,
                    )
            self._encoders.append(_ENCODERS[part])
        written = urlsplit(static if seen_output else source)
        if written.scheme.lower() not in ("http", "https") or not written.hostname:
            raise self._src.syntax_error(
                f"not an http(s) URL: {source[:80]!r}; write it as https://host/path",
                self._src.offset,
            )

    def render(self, context: Mapping[str, Any], *, timezone: str = "UTC") -> str:
        """The URL for ``context``, each value percent-encoded for its place. Raises
        :class:`~cxbridge.errors.TemplateRenderError`, also for a ``.``/``..`` path segment."""
        run = _Render(context, timezone, self._src)
        try:
            parts = []
            for node, encode in zip(self._template.nodes, self._encoders, strict=True):
                text = run.write([node])
                parts.append(text if encode is None else encode(text))
        except (LiquidError, ArithmeticError, ValueError, TypeError) as err:
            raise self._src.render_error(err) from None
        finally:
            run.close()
        url = "".join(parts)
        if len(url) > MAX_URL:
            raise TemplateRenderError(
                f"url renders to {len(url):,} characters, over the limit of {MAX_URL:,}: put long "
                "values in the body",
                path=self._src.leaf,
            )
        path = urlsplit(url).path
        if any(unquote(segment) in (".", "..") for segment in path.split("/")):
            raise TemplateRenderError(
                f"url renders to a path with a '.' or '..' segment: {url[:200]!r}",
                path=self._src.leaf,
            )
        return url

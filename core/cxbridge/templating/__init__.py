"""Liquid templates (python-liquid 2), JSON-first, strict and resource-limited.

Three kinds of template, each compiled once (at config load) and rendered many times:

* :class:`TextTemplate` - plain text: headers, text bodies.
* :class:`UrlTemplate` - a URL: static scheme and host, every value percent-encoded for its place.
* :class:`JsonTemplate` - a JSON/YAML document whose string leaves (and, optionally, keys) are
  Liquid. A leaf that is exactly one output statement, ``"{{ qi.score }}"``, keeps the value's type
  (number, bool, null, list, object); any other leaf renders to a string. The JSON encoder does all
  escaping, so event text can never break out of its field.
* :class:`Condition` - one Liquid boolean expression: ``qi.score > 85 and call.direction == "x"``.

Templates are untrusted. Rendering is STRICT (errors raise, limits hold). Undefined variables raise
when output, but are falsy in conditions and work with ``default``. Unknown filters and wrong filter
arity are refused at compile time. Every render is bounded: ranges, list sizes, string sizes,
integer sizes, loop iterations, output size and total filter work are capped (``MAX_*``).

The package's modules, one job each: ``_limits`` (caps and per-render state), ``_filters`` (filter
guards, ``date``, ``json``), ``_environment`` (the Liquid environment, one render), ``_source``
(positions, error conversion), ``_compile`` (compile-time checks), ``_variables`` (variable
analysis, :func:`check_variables`), ``_pydantic`` (pydantic fields), ``_templates``
(:class:`TextTemplate`, :class:`Condition`), ``_url`` (:class:`UrlTemplate`) and ``_document``
(:class:`JsonTemplate`).
"""

from __future__ import annotations

from cxbridge.templating._document import JsonTemplate
from cxbridge.templating._limits import (
    MAX_FILTER_WORK,
    MAX_INT_BITS,
    MAX_ITEMS,
    MAX_LOOP_ITERATIONS,
    MAX_OUTPUT,
    MAX_STRING,
    MAX_URL,
    zone,
)
from cxbridge.templating._templates import Condition, TextTemplate
from cxbridge.templating._url import UrlTemplate
from cxbridge.templating._variables import VariableRef, check_variables

__all__ = [
    "MAX_FILTER_WORK",
    "MAX_INT_BITS",
    "MAX_ITEMS",
    "MAX_LOOP_ITERATIONS",
    "MAX_OUTPUT",
    "MAX_STRING",
    "MAX_URL",
    "Condition",
    "JsonTemplate",
    "TextTemplate",
    "UrlTemplate",
    "VariableRef",
    "check_variables",
    "zone",
]

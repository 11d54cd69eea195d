"""YAML loading that remembers where every value came from, so errors can say ``file:line:col``."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["Located", "Position", "Refusal", "load_located", "root_scalar"]

Path = tuple[str | int, ...]
# ``$$``, a reference ``${NAME}``, or (group 2) any other ``${…}`` form, which is refused.
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|(\$\{[^}]*\}?)")


@dataclass(frozen=True)
class Position:
    """1-based line and column of a YAML node; ``style`` is the scalar's quoting (``'"'``, ``"|"``...)."""

    line: int
    column: int
    style: str | None = None


@dataclass
class Located:
    """A loaded YAML document plus the position of each value and each mapping key, by path."""

    data: Any
    values: dict[Path, Position] = field(default_factory=dict)
    keys: dict[Path, Position] = field(default_factory=dict)
    problems: list[tuple[Position, str]] = field(default_factory=list)
    references: set[str] = field(default_factory=set)
    """Names of the ``${VAR}`` references that were substituted (names only, never values)."""

    def position(self, path: Path, *, key: bool = False) -> Position:
        """Where ``path`` is, or its nearest ancestor that exists (a missing key points at its parent)."""
        table = self.keys if key else self.values
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            if prefix in table:
                return table[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return Position(1, 1)

    def position_in_template(self, path: Path, line: int | None, column: int | None) -> Position:
        """The file position of a (line, column) inside the template string at ``path``."""
        start = self.position(path)
        if not line:
            return start
        if start.style in ("|", ">"):
            # Block scalars start on the line after the indicator; the column is the content indent.
            return Position(start.line + line, column or 1)
        if line == 1:
            quote = 1 if start.style in ('"', "'") else 0
            return Position(start.line, start.column + quote + (column or 1) - 1)
        return Position(start.line + line - 1, column or 1)


Refusal = Callable[[str], str | None]
"""Why a variable may not be read here (a message), or None if it may."""


def load_located(text: str, env: Mapping[str, str], refuse: Refusal | None = None) -> Located:
    """Parse YAML ``text``; ``${VAR}`` in strings is replaced from ``env`` (``$$`` is a literal ``$``).

    A missing variable, one that ``refuse`` refuses, or a duplicate key is recorded in ``problems``
    rather than raised, so that every problem of a file can be reported at once. YAML syntax errors
    raise :class:`yaml.YAMLError`.
    """
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    located = Located(None)
    if node is not None:
        constructor = yaml.SafeLoader("")
        scope = _Scope(env, refuse or (lambda name: None))
        located.data = _build(node, (), located, scope, constructor.construct_object)
    return located


def root_scalar(text: str, key: str) -> str | None:
    """The plain text of ``key`` in the top-level mapping of YAML ``text``, if it is a scalar."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == key and isinstance(value_node, yaml.ScalarNode):
                return str(value_node.value)
    return None


@dataclass(frozen=True)
class _Scope:
    env: Mapping[str, str]
    refuse: Refusal


def _pos(node: yaml.Node) -> Position:
    style = getattr(node, "style", None)
    return Position(node.start_mark.line + 1, node.start_mark.column + 1, style)


def _build(
    node: yaml.Node,
    path: Path,
    located: Located,
    scope: _Scope,
    construct: Callable[[yaml.Node], Any],
) -> Any:
    located.values[path] = _pos(node)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = construct(key_node)
            if not isinstance(key, str | int):
                key = str(key)
            child = (*path, key)
            if key in result:
                located.problems.append((_pos(key_node), f"duplicate key {key!r}"))
            located.keys[child] = _pos(key_node)
            result[key] = _build(value_node, child, located, scope, construct)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(item, (*path, index), located, scope, construct)
            for index, item in enumerate(node.value)
        ]
    value = construct(node)
    if isinstance(value, str) and "$" in value:
        value = _substitute(value, _pos(node), located, scope)
    return value


def _substitute(value: str, position: Position, located: Located, scope: _Scope) -> str:
    quote = 1 if position.style in ('"', "'") else 0

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        where = Position(position.line, position.column + quote + match.start())
        if match.group(2) is not None:
            located.problems.append(
                (
                    where,
                    f"unsupported reference {match.group(2)!r}: only ${{NAME}} is read from the "
                    "environment (no defaults or other shell forms); write $$ for a literal $",
                )
            )
            return ""
        if name is None:
            return "$"
        refusal = scope.refuse(name)
        if refusal is not None:
            located.problems.append((where, refusal))
            return ""
        if name not in scope.env:
            located.problems.append(
                (
                    where,
                    f"environment variable {name} is not set (referenced as ${{{name}}}); set it "
                    "or remove the reference",
                )
            )
            return ""
        located.references.add(name)
        return scope.env[name]

    return _ENV_REF.sub(replace, value)

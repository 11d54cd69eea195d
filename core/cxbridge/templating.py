"""Liquid templating, JSON-first. (Interface skeleton: being implemented — see the helper brief.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["Condition", "JsonTemplate", "TextTemplate"]


class TextTemplate:
    def __init__(self, source: str) -> None:
        self.source = source

    def render(self, context: Mapping[str, Any], *, timezone: str = "UTC") -> str:
        raise NotImplementedError


class JsonTemplate:
    def __init__(self, document: Any) -> None:
        self.document = document

    def render(self, context: Mapping[str, Any], *, timezone: str = "UTC") -> Any:
        raise NotImplementedError

    def render_bytes(self, context: Mapping[str, Any], *, timezone: str = "UTC") -> bytes:
        raise NotImplementedError


class Condition:
    def __init__(self, expression: str) -> None:
        self.expression = expression

    def matches(self, context: Mapping[str, Any], *, timezone: str = "UTC") -> bool:
        raise NotImplementedError

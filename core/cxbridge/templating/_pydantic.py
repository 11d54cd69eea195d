"""Pydantic integration of the template classes: a field typed as a template accepts its source
and compiles it (syntax errors become validation errors), and serialises back to the source."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from cxbridge.errors import TemplateSyntaxError

__all__ = ["_PydanticTemplate"]


class _PydanticTemplate:
    """Pydantic integration: a field typed as the template accepts its source and compiles it."""

    _json_schema: ClassVar[dict[str, Any]] = {"type": "string"}

    def _source_value(self) -> Any:
        raise NotImplementedError

    @classmethod
    def _from_source(cls, value: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def _validate(cls, value: Any) -> Any:
        if isinstance(value, cls):
            return value
        try:
            return cls._from_source(value)
        except TemplateSyntaxError as err:
            ctx = _error_context(err)
            ctx["more"] = [_error_context(other) for other in err.more]
            raise PydanticCustomError("template_syntax", "{message}", ctx) from None

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda template: template._source_value(), when_used="always"
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return dict(cls._json_schema)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _PydanticTemplate)
        return bool(self._source_value() == other._source_value())

    def __hash__(self) -> int:
        return hash(
            (type(self).__name__, json.dumps(self._source_value(), sort_keys=True, default=str))
        )

    def __copy__(self) -> Any:
        return self  # immutable once compiled

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._source_value()!r})"


def _error_context(err: TemplateSyntaxError) -> dict[str, Any]:
    return {
        "message": err.message,
        "line": err.line,
        "column": err.column,
        "path": list(err.path or ()),
    }

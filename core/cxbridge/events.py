"""The events the CXMind platform sends, as typed and versioned pydantic models.

Wire names are camelCase (``call.externalId``, ``ai.summary``, ``qi.score``) because templates are written
against the wire shape. Unknown fields are kept so that a newer platform can add fields without breaking an
older bridge; a wrong type is refused with the path of the field.

What cannot be stored or sent is refused too, with the path where it is: text with a lone surrogate
(``"\\ud800"``: not encodable as UTF-8), nesting deeper than :data:`MAX_EVENT_DEPTH`, and (in
:func:`parse_event`) an event over ``max_bytes`` (setting ``CXBRIDGE_MAX_EVENT_BYTES``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, tzinfo
from types import UnionType
from typing import Annotated, Any, Literal, TypeAlias, Union, get_args, get_origin

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from cxbridge.errors import EventValidationError

__all__ = [
    "EVENT_TYPES",
    "MAX_EVENT_BYTES",
    "MAX_EVENT_DEPTH",
    "ActionItem",
    "Agent",
    "AiOutcome",
    "AiSummary",
    "Call",
    "CallCreate",
    "CallOutcome",
    "CallSummary",
    "Customer",
    "Emotion",
    "Event",
    "Intent",
    "QualityInspection",
    "QualityScore",
    "RubricItem",
    "event_json_schema",
    "parse_event",
]


#: The newest event schema version this cxbridge understands; a newer event is refused, not guessed at.
SCHEMA_VERSION = 1
MAX_EVENT_BYTES = 256 * 1024
"""Default cap on an event's JSON in bytes, as received (a mapping: as stored); setting
``CXBRIDGE_MAX_EVENT_BYTES``."""
MAX_EVENT_DEPTH = 32
"""Most levels of objects and lists in one event, counted from the envelope (``call.agent`` is 2)."""
_LIMIT_ERROR = "event_limit"


def _unsendable(data: Any) -> tuple[tuple[str | int, ...], str] | None:
    """The first place in raw event data that cannot be stored or sent, as (path, reason).

    Iterative, so that no nesting depth can overflow the stack while looking; paths are built only
    once something is found (the common case, nothing, costs a few microseconds).
    """
    if _fits(data):
        return None
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path, "text holds a lone surrogate (not valid Unicode)"
            continue
        if isinstance(value, dict | list | tuple):
            if len(path) >= MAX_EVENT_DEPTH:
                return path, f"nested deeper than {MAX_EVENT_DEPTH} levels"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and _SURROGATE.search(key):
                    return (*path, key), "field name holds a lone surrogate"
                stack.append((item, (*path, key)))
    return None


def _fits(data: Any) -> bool:
    """Whether ``data`` has no lone surrogate and no nesting over MAX_EVENT_DEPTH (no paths)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                return False
        elif isinstance(value, dict):
            if depth >= MAX_EVENT_DEPTH:
                return False
            for key, item in value.items():
                if isinstance(key, str) and not key.isascii() and _SURROGATE.search(key):
                    return False
                stack.append((item, depth + 1))
        elif isinstance(value, list | tuple):
            if depth >= MAX_EVENT_DEPTH:
                return False
            stack.extend((item, depth + 1) for item in value)
    return True


_SURROGATE = re.compile("[\ud800-\udfff]")


def _dotted(path: tuple[str | int, ...]) -> str:
    return _printable(".".join(str(p) for p in path)) or "(event)"


def _printable(text: str) -> str:
    """``text`` with lone surrogates written as ``\\udXXX``, so that messages can be printed."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _Wire(BaseModel):
    """Base of every wire model: camelCase aliases, extra fields kept, Python names accepted too."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="allow",
        frozen=True,
    )


class Agent(_Wire):
    id: str
    name: str | None = None
    email: str | None = None


class Customer(_Wire):
    phone: str | None = None
    email: str | None = None
    name: str | None = None


class Call(_Wire):
    id: str
    external_id: str | None = None
    direction: Literal["inbound", "outbound", "internal"] = "inbound"
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    started_at: AwareDatetime | None = None
    answered_at: AwareDatetime | None = None
    ended_at: AwareDatetime | None = None
    duration_seconds: float | None = Field(default=None, ge=0)
    agent: Agent | None = None
    customer: Customer | None = None
    queue: str | None = None


class Emotion(_Wire):
    label: str
    score: float | None = Field(default=None, ge=0, le=1)
    previous: str | None = None


class Intent(_Wire):
    name: str
    confidence: float | None = Field(default=None, ge=0, le=1)


class AiOutcome(_Wire):
    emotion: Emotion | None = None
    intents: list[Intent] = []
    # Known signals are "escalation" and "sales_lead"; the platform may add more, so any string is taken.
    signal: str | None = None


class ActionItem(_Wire):
    text: str
    owner: str | None = None
    due_date: date | None = None


class AiSummary(_Wire):
    summary: str
    tags: list[str] = []
    action_items: list[ActionItem] = []
    conclusions: list[str] = []
    sentiment: str | None = None


class RubricItem(_Wire):
    criterion: str
    score: int | float
    max: int | float | None = None
    comment: str | None = None


class QualityInspection(_Wire):
    score: int | float = Field(ge=0, le=100)
    passed: bool | None = None
    rubric: list[RubricItem] = []


class _Envelope(_Wire):
    """Fields every event carries. ``id`` is chosen by the producer and unique per tenant."""

    id: str = Field(min_length=1, max_length=200)
    version: int = Field(
        default=SCHEMA_VERSION,
        ge=1,
        description="The event schema's version; this cxbridge reads versions up to "
        f"{SCHEMA_VERSION} (a newer one needs a newer cxbridge).",
    )
    occurred_at: AwareDatetime
    tenant: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")

    @field_validator("version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"version {version} is newer than this cxbridge reads (up to {SCHEMA_VERSION}); "
                "upgrade cxbridge"
            )
        return version

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        problem = _unsendable(data)
        if problem is not None:
            path, reason = problem
            context = {"where": _dotted(path), "steps": list(path), "reason": reason}
            raise PydanticCustomError(_LIMIT_ERROR, "{where}: {reason}", context)
        return data

    def template_context(self, timezone: str = "UTC") -> dict[str, Any]:
        """The event as templates see it: its wire shape, plus ``event`` for the envelope alone.

        Date-times are ISO 8601 strings in ``timezone`` (an IANA name such as ``Europe/Berlin``),
        UTC written with ``Z`` by default, whatever offset the producer sent. Raises ``ValueError``
        for an unknown time zone.
        """
        from cxbridge.templating import zone

        data = self.model_dump(mode="json", by_alias=True)
        tz = zone(timezone)
        for path in _datetime_paths(type(self)):
            _to_zone(data, path, tz)
        data["event"] = {k: data[k] for k in ("id", "type", "version", "occurredAt", "tenant")}
        return data


@functools.cache
def _datetime_paths(model: type[BaseModel]) -> tuple[tuple[str, ...], ...]:
    """Wire paths of the date-time fields of ``model`` ("*" steps into a list), computed once."""

    def walk(
        annotation: Any, prefix: tuple[str, ...], seen: frozenset[type]
    ) -> Iterator[tuple[str, ...]]:
        origin = get_origin(annotation)
        if origin is Annotated:
            yield from walk(get_args(annotation)[0], prefix, seen)
        elif origin in (Union, UnionType):
            for arg in get_args(annotation):
                yield from walk(arg, prefix, seen)
        elif origin is list:
            yield from walk(get_args(annotation)[0], (*prefix, "*"), seen)
        elif annotation in (datetime, AwareDatetime):
            yield prefix
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation in seen:
                return
            for name, field in annotation.model_fields.items():
                yield from walk(
                    field.annotation, (*prefix, field.alias or name), seen | {annotation}
                )

    return tuple(path for path in walk(model, (), frozenset()) if path[-1] != "*")


def _to_zone(data: Any, path: tuple[str, ...], tz: tzinfo) -> None:
    """Rewrite the ISO date-time at ``path`` inside ``data`` (a JSON dump) in time zone ``tz``."""
    *parents, last = path
    nodes = [data]
    for step in parents:
        if step == "*":
            nodes = [item for node in nodes if isinstance(node, list) for item in node]
        else:
            nodes = [node[step] for node in nodes if isinstance(node, dict) and node.get(step)]
    for node in nodes:
        value = node.get(last) if isinstance(node, dict) else None
        if isinstance(value, str):
            text = datetime.fromisoformat(value).astimezone(tz).isoformat()
            node[last] = text[:-6] + "Z" if tz is UTC else text


class CallCreate(_Envelope):
    """A call was connected."""

    type: Literal["call_create"]
    call: Call


class CallOutcome(_Envelope):
    """The AI saw something during the call: an emotion shift (anger) or a sales signal (asked for pricing)."""

    type: Literal["call_outcome"]
    call: Call
    ai: AiOutcome


class CallSummary(_Envelope):
    """The AI summary of a finished call: summary text, tags, action items, conclusions."""

    type: Literal["call_summary"]
    call: Call
    ai: AiSummary


class QualityScore(_Envelope):
    """The result of a quality inspection against a rubric."""

    type: Literal["quality_score"]
    call: Call
    qi: QualityInspection


Event: TypeAlias = Annotated[
    CallCreate | CallOutcome | CallSummary | QualityScore, Field(discriminator="type")
]
EVENT_TYPES: dict[str, type[_Envelope]] = {
    "call_create": CallCreate,
    "call_outcome": CallOutcome,
    "call_summary": CallSummary,
    "quality_score": QualityScore,
}
_event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: dict[str, Any] | bytes | str, *, max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """Validate one event from its wire form (a mapping or JSON text).

    Raises :class:`~cxbridge.errors.EventValidationError` listing every problem with its field path,
    e.g. ``qi.score: Input should be less than or equal to 100``. Refused as well: JSON text over
    ``max_bytes`` (UTF-8) before it is parsed, a mapping whose stored JSON would be over
    ``max_bytes``, text with lone surrogates and nesting deeper than :data:`MAX_EVENT_DEPTH`.
    """
    event_id = data.get("id") if isinstance(data, dict) else None
    event_id = _printable(event_id[:200]) if isinstance(event_id, str) else None
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")  # a lone surrogate then fails as bad UTF-8
    if isinstance(data, bytes) and len(data) > max_bytes:  # refused before parsing
        raise EventValidationError([("(event)", _too_large(len(data), max_bytes))])
    try:
        if isinstance(data, bytes):
            event = _event_adapter.validate_json(data)
        else:
            event = _event_adapter.validate_python(data)
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors()]
        raise EventValidationError(problems, event_id=event_id) from None
    if not isinstance(data, bytes):  # a mapping: measured as the JSON it is stored as
        size = len(event.model_dump_json(by_alias=True))
        if size > max_bytes:
            raise EventValidationError(
                [("(event)", _too_large(size, max_bytes))], event_id=event.id
            )
    return event


def _problem(err: Any) -> tuple[str, str]:
    """One pydantic error as (field path, message); a storage limit adds the path inside the
    event that it found."""
    if err["type"] == _LIMIT_ERROR:
        return _dotted((*err["loc"], *err["ctx"]["steps"])), err["ctx"]["reason"]
    return _dotted(tuple(err["loc"])), err["msg"]


def _too_large(size: int, limit: int) -> str:
    return (
        f"the event is {size:,} bytes of JSON, over the limit of {limit:,}; send less text or "
        "raise CXBRIDGE_MAX_EVENT_BYTES"
    )


def event_json_schema() -> dict[str, Any]:
    """JSON Schema of the event union, as the ingress accepts it."""
    return _event_adapter.json_schema(by_alias=True)

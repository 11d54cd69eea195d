"""Tenant configuration: one YAML file per tenant, validated completely at load time.

A tenant file names the tenant, its ingress API keys and its destinations. Each destination has the core
keys below; every other key belongs to the destination type's plugin and is validated against its options
model::

    tenant: acme
    timezone: Europe/Berlin          # dates in templates render in this zone (default UTC)
    api_keys: ["${ACME_API_KEY}"]    # ${VAR} is read from the environment at load time:
                                     # ACME_* only, plus CXBRIDGE_TENANT_ENV_ALLOW
    retry: {window: 86400}           # tenant-wide retry defaults
    destinations:
      qa-webhook:
        type: http                   # core keys: type, events, when, enabled, retry, ordered
        events: [quality_score]
        when: qi.score < 50
        url: https://example.com/hook
        body: {status: "{% if qi.score > 85 %}Pass{% else %}Review{% endif %}"}

Every problem of every file is reported at once, each as ``file:line:col: message``.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import re
import warnings
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from cxbridge.destinations import Destination, DestinationType
from cxbridge.errors import ConfigError, ConfigProblem
from cxbridge.events import EVENT_TYPES
from cxbridge.retry import RetryPolicy
from cxbridge.templating import Condition, JsonTemplate, TextTemplate, check_variables
from cxbridge.yamlpos import Located, Refusal, load_located, root_scalar

__all__ = [
    "TenantConfig",
    "env_prefix",
    "hash_api_key",
    "load_config_dir",
    "load_tenant",
    "tenant_json_schema",
]

_M = TypeVar("_M", bound=BaseModel)
CORE_DESTINATION_KEYS = ("type", "events", "when", "enabled", "retry", "ordered")
ALL_EVENTS = "*"


class _RetryOverrides(RetryPolicy):
    """A destination's ``retry:`` block: a policy, plus per-event-type overrides of it."""

    events: dict[str, dict[str, Any]] = {}


class _CoreDestination(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    events: list[str] = Field(min_length=1)
    when: Condition | None = None
    enabled: bool = True
    retry: dict[str, Any] | None = None
    ordered: bool | None = None  # None: the destination type's default


class _TenantFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)
    timezone: str = "UTC"
    api_keys: list[str] = []
    retry: RetryPolicy | None = None
    destinations: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True)
class TenantConfig:
    """One tenant, loaded. ``api_key_hashes`` are SHA-256 hex digests; plain keys never stay in memory
    longer than loading takes."""

    name: str
    file: Path
    timezone: str = "UTC"
    api_key_hashes: frozenset[str] = frozenset()
    destinations: dict[str, Destination] = field(default_factory=dict)
    #: What loads but is probably a mistake (e.g. unsigned webhooks): plugins say so with
    #: ``warnings.warn`` while their options are validated.
    warnings: tuple[ConfigProblem, ...] = ()
    #: The environment variables the file read (names only), e.g. to redact their values.
    env_names: frozenset[str] = frozenset()

    def destinations_for(self, event_type: str) -> list[Destination]:
        return [d for d in self.destinations.values() if d.accepts(event_type)]


def hash_api_key(key: str) -> str:
    """The at-rest form of an ingress API key. A tenant file may also list ``sha256:<hex>`` directly."""
    return hashlib.sha256(key.encode()).hexdigest()


def env_prefix(tenant: str) -> str:
    """What the names of a tenant's environment variables start with: ``acme-eu`` → ``ACME_EU_``."""
    return re.sub(r"[^A-Z0-9]", "_", tenant.upper()) + "_"


def load_tenant(
    path: Path,
    destination_types: Mapping[str, DestinationType],
    env: Mapping[str, str] | None = None,
    *,
    env_allow: Collection[str] = (),
    tenants: Collection[str] = (),
) -> TenantConfig:
    """Load and validate one tenant file. Raises :class:`ConfigError` with every problem found.

    ``${VAR}`` reads ``env`` (default: the process environment), scoped: tenant ``acme`` may read
    only names that start with ``ACME_`` (:func:`env_prefix`) and the names in ``env_allow``
    (``CXBRIDGE_TENANT_ENV_ALLOW``). Names under a longer prefix of another of ``tenants``
    (``ACME_EU_…`` of tenant ``acme-eu``) are that tenant's own.
    """
    scope = _EnvScope(frozenset(env_allow), frozenset(tenants))
    return _Loader(path, destination_types, os.environ if env is None else env, scope).load()


def load_config_dir(
    directory: Path,
    destination_types: Mapping[str, DestinationType],
    env: Mapping[str, str] | None = None,
    *,
    env_allow: Collection[str] = (),
) -> dict[str, TenantConfig]:
    """Load every ``*.yaml`` / ``*.yml`` file of ``directory``; problems of all files are reported
    together. ``env`` and ``env_allow`` as in :func:`load_tenant`."""
    if not directory.is_dir():
        raise ConfigError([ConfigProblem(str(directory), 1, 1, "config directory does not exist")])
    tenants: dict[str, TenantConfig] = {}
    problems: list[ConfigProblem] = []
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    names = _declared_tenants(files)
    by_prefix: dict[str, str] = {}
    for file, name in names.items():
        first = by_prefix.setdefault(env_prefix(name), name)
        if first != name:
            message = (
                f"tenants {first!r} and {name!r} would both read environment variables "
                f"{env_prefix(name)}*; rename one of them"
            )
            problems.append(ConfigProblem(str(file), 1, 1, message))
    for path in files:
        try:
            tenant = load_tenant(
                path, destination_types, env, env_allow=env_allow, tenants=set(names.values())
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if tenant.name in tenants:
            other = tenants[tenant.name].file
            problems.append(
                ConfigProblem(str(path), 1, 1, f"tenant {tenant.name!r} is also defined in {other}")
            )
        tenants[tenant.name] = tenant
    if problems:
        raise ConfigError(problems)
    return tenants


def _declared_tenants(files: list[Path]) -> dict[Path, str]:
    """The tenant name each file declares, read ahead (a broken file is reported when loaded)."""
    names: dict[Path, str] = {}
    for path in files:
        try:
            name = root_scalar(path.read_text(encoding="utf-8"), "tenant")
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if name:
            names[path] = name
    return names


@dataclass(frozen=True)
class _EnvScope:
    """Which environment variables a tenant file may read: see :func:`load_tenant`."""

    allow: frozenset[str]
    tenants: frozenset[str]

    def refusal(self, tenant: str | None) -> Refusal:
        own = env_prefix(tenant or "")
        others = sorted(
            ((env_prefix(t), t) for t in self.tenants if t != tenant),
            key=lambda item: -len(item[0]),
        )

        def refuse(name: str) -> str | None:
            if name in self.allow:
                return None
            if not tenant:
                return (
                    f"environment variable {name} cannot be read: a file that names no tenant "
                    "may read only the variables listed in CXBRIDGE_TENANT_ENV_ALLOW"
                )
            if not name.startswith(own):
                return (
                    f"environment variable {name} is not this tenant's: tenant {tenant!r} may read "
                    f"only names starting with {own} and those listed in "
                    "CXBRIDGE_TENANT_ENV_ALLOW; rename the variable or add it to that setting"
                )
            for prefix, other in others:
                if len(prefix) > len(own) and name.startswith(prefix):
                    return (
                        f"environment variable {name} belongs to tenant {other!r} (its variables "
                        f"start with {prefix}); tenant {tenant!r} may not read it"
                    )
            return None

        return refuse


class _Loader:
    def __init__(
        self,
        path: Path,
        types: Mapping[str, DestinationType],
        env: Mapping[str, str],
        scope: _EnvScope,
    ) -> None:
        self.path = path
        self.types = types
        self.env = env
        self.scope = scope
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []
        self.doc = Located(None)

    def problem(self, where: tuple[str | int, ...], message: str, *, key: bool = False) -> None:
        pos = self.doc.position(where, key=key)
        self.problems.append(ConfigProblem(str(self.path), pos.line, pos.column, message))

    def load(self) -> TenantConfig:
        try:
            text = self.path.read_text(encoding="utf-8")
            refuse = self.scope.refusal(root_scalar(text, "tenant"))
            self.doc = load_located(text, self.env, refuse)
        except OSError as exc:
            raise ConfigError(
                [ConfigProblem(str(self.path), 1, 1, f"cannot read: {exc}")]
            ) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            reason = getattr(exc, "problem", None) or str(exc)
            problem = ConfigProblem(str(self.path), line, col, f"invalid YAML: {reason}")
            raise ConfigError([problem]) from None
        for pos, message in self.doc.problems:
            self.problems.append(ConfigProblem(str(self.path), pos.line, pos.column, message))
        if not isinstance(self.doc.data, dict):
            self.problem((), "a tenant file must be a mapping with at least `tenant:`")
            raise ConfigError(self.problems)

        tenant = self._validate(_TenantFile, self.doc.data, ())
        if tenant is None:
            raise ConfigError(self.problems)
        timezone = self._check_timezone(tenant.timezone)
        destinations = {
            name: dest
            for name, raw in tenant.destinations.items()
            if (dest := self._destination(tenant, name, raw, timezone)) is not None
        }
        if self.problems:
            # One problem per position: a value that names a missing ${VAR} is not also reported
            # as an empty URL, secret, etc.
            first = {(p.line, p.column): p for p in reversed(self.problems)}
            raise ConfigError(
                sorted(first.values(), key=lambda p: (p.line, p.column)), tenant=tenant.tenant
            )
        return TenantConfig(
            name=tenant.tenant,
            file=self.path,
            timezone=timezone,
            api_key_hashes=frozenset(
                key.removeprefix("sha256:") if key.startswith("sha256:") else hash_api_key(key)
                for key in tenant.api_keys
            ),
            destinations=destinations,
            warnings=tuple(self.warnings),
            env_names=frozenset(self.doc.references),
        )

    def _check_timezone(self, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self.problem(("timezone",), f"unknown time zone {name!r} (use an IANA name like UTC)")
            return "UTC"
        return name

    def _validate(
        self,
        model: type[_M],
        data: Any,
        where: tuple[str | int, ...],
        also_known: tuple[str, ...] = (),
        context: dict[str, Any] | None = None,
    ) -> _M | None:
        """Validate ``data`` against ``model``, reporting every problem. Unknown keys are reported
        with the nearest known one (``also_known``: keys a sibling model takes) and left out, so
        that the rest — a template's errors, say — is still checked in the same run."""
        if model.model_config.get("extra") == "forbid" and isinstance(data, dict):
            known = [*_keys(model), *also_known]
            unknown = [key for key in data if key not in known]
            for key in unknown:
                hint = difflib.get_close_matches(str(key), known, n=1)
                suggestion = f" — did you mean {hint[0]!r}?" if hint else ""
                name = ".".join(str(p) for p in (*where, key))
                self.problem((*where, key), f"{name}: unknown key{suggestion}", key=True)
            data = {key: value for key, value in data.items() if key not in unknown}
        try:
            return model.model_validate(data, context=context)
        except ValidationError as exc:
            for err in exc.errors():
                self._report(err, where)
            return None

    def _report(self, err: Any, where: tuple[str | int, ...]) -> None:
        loc = (*where, *err["loc"])
        ctx = err.get("ctx") or {}
        if err["type"] == "template_syntax":
            for each in (ctx, *ctx.get("more", ())):
                self._template_problem(
                    loc, each.get("path"), each.get("line"), each.get("column"), each["message"]
                )
            return
        field_name = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            self.problem(loc, f"{field_name}: unknown key", key=True)
        elif err["type"] == "missing":
            self.problem(loc[:-1], f"{field_name}: required key is missing", key=True)
        else:
            self.problem(loc, f"{field_name}: {err['msg']}")

    def _destination(
        self, tenant: _TenantFile, name: str, raw: Any, timezone: str
    ) -> Destination | None:
        where: tuple[str | int, ...] = ("destinations", name)
        if not isinstance(raw, dict):
            self.problem(where, f"destination {name!r} must be a mapping")
            return None
        before = len(self.problems)
        # Keep checking after a problem in the core keys, so that one run reports everything.
        core = self._validate(_CoreDestination, raw, where)
        type_name = raw.get("type")
        dtype = self.types.get(type_name) if isinstance(type_name, str) else None
        if dtype is None and isinstance(type_name, str):
            known = ", ".join(sorted(self.types)) or "none (is a plugin installed?)"
            hint = difflib.get_close_matches(type_name, self.types, n=1)
            suggestion = f" — did you mean {hint[0]!r}?" if hint else ""
            self.problem(
                (*where, "type"),
                f"unknown destination type {type_name!r}{suggestion}; installed types: {known}",
            )
        raw_events = raw.get("events")
        events = self._events(
            [e for e in raw_events if isinstance(e, str)] if isinstance(raw_events, list) else [],
            where,
        )
        retry, retry_by_event = self._retry(
            tenant.retry,
            raw.get("retry") if isinstance(raw.get("retry"), dict) else None,
            (*where, "retry"),
        )
        if dtype is None:
            return None
        options_data = {k: v for k, v in raw.items() if k not in CORE_DESTINATION_KEYS}
        # The context lets a plugin's validators refuse event types it cannot send.
        context = {"events": frozenset(events), "tenant": tenant.tenant, "destination": name}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            options = self._validate(
                dtype.options, options_data, where, CORE_DESTINATION_KEYS, context
            )
        for warning in caught:
            pos = self.doc.position(where, key=True)
            message = f"destinations.{name}: warning: {warning.message}"
            self.warnings.append(ConfigProblem(str(self.path), pos.line, pos.column, message))
        # When the options as a whole are refused, the keys that are valid on their own still have
        # their templates checked: one run of `validate` reports every problem.
        checked = options if options is not None else _valid_fields(dtype.options, options_data)
        for path, template in _templates(checked):
            self._check_template(template, events, (*where, *path))
        if core is not None and core.when is not None:
            self._check_template(core.when, events, (*where, "when"))
        if len(self.problems) > before or options is None or core is None:
            return None
        return Destination(
            tenant=tenant.tenant,
            name=name,
            type=core.type,
            events=frozenset(events),
            options=options,
            timezone=timezone,
            enabled=core.enabled,
            when=core.when,
            retry=retry,
            retry_by_event=retry_by_event,
            ordered=core.ordered if core.ordered is not None else dtype.ordering == "call",
        )

    def _events(self, names: list[str], where: tuple[str | int, ...]) -> set[str]:
        if ALL_EVENTS in names:
            return set(EVENT_TYPES)
        for index, name in enumerate(names):
            if name not in EVENT_TYPES:
                self.problem(
                    (*where, "events", index),
                    f"unknown event type {name!r}; known: {', '.join(EVENT_TYPES)} or '*'",
                )
        return {n for n in names if n in EVENT_TYPES}

    def _retry(
        self,
        tenant_default: RetryPolicy | None,
        raw: dict[str, Any] | None,
        where: tuple[str | int, ...],
    ) -> tuple[RetryPolicy | None, dict[str, RetryPolicy]]:
        base = tenant_default.model_dump() if tenant_default else {}
        if raw is None:
            return tenant_default, {}
        overrides = self._validate(_RetryOverrides, {**base, **raw}, where)
        if overrides is None:
            return tenant_default, {}
        policy = RetryPolicy.model_validate(overrides.model_dump(exclude={"events"}))
        by_event: dict[str, RetryPolicy] = {}
        for event_type, changes in overrides.events.items():
            if event_type not in EVENT_TYPES:
                self.problem((*where, "events", event_type), f"unknown event type {event_type!r}")
                continue
            specific = self._validate(
                RetryPolicy, {**policy.model_dump(), **changes}, (*where, "events", event_type)
            )
            if specific is not None:
                by_event[event_type] = specific
        return policy, by_event

    def _check_template(
        self,
        template: TextTemplate | JsonTemplate | Condition,
        events: set[str],
        where: tuple[str | int, ...],
    ) -> None:
        # A template under a per-event-type key (``mappings: {call_summary: ...}``) renders only
        # for that type.
        events = {key for key in where if key in events} or events
        for error in check_variables(template, events):
            self._template_problem(where, error.path, error.line, error.column, error.message)

    def _template_problem(
        self,
        where: tuple[str | int, ...],
        leaf: Any,
        line: int | None,
        column: int | None,
        message: str,
    ) -> None:
        """A problem inside the template at ``where`` (``leaf``: its path inside a JSON document)."""
        path = (*where, *(leaf or ()))
        pos = self.doc.position_in_template(path, line, column)
        field_name = ".".join(str(p) for p in path)
        self.problems.append(
            ConfigProblem(str(self.path), pos.line, pos.column, f"{field_name}: {message}")
        )


def _valid_fields(model: type[BaseModel], data: Mapping[str, Any]) -> dict[str, Any]:
    """Each field of ``data`` that validates on its own against its type in ``model``."""
    valid = {}
    for name, info in model.model_fields.items():
        key = _key(name, info)
        if key in data and info.annotation is not None:
            with contextlib.suppress(ValidationError, TypeError, ValueError):
                valid[name] = TypeAdapter(info.annotation).validate_python(data[key])
    return valid


def _key(name: str, info: FieldInfo) -> str:
    return info.validation_alias if isinstance(info.validation_alias, str) else info.alias or name


def _keys(model: type[BaseModel]) -> list[str]:
    """The keys a model takes in a file: each field's alias where it has one, else its name."""
    return [_key(name, info) for name, info in model.model_fields.items()]


def _templates(
    value: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], TextTemplate | JsonTemplate | Condition]]:
    """Every template inside a validated options model, with its path (for variable checks)."""
    if isinstance(value, TextTemplate | JsonTemplate | Condition):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _templates(getattr(value, name), (*path, name))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _templates(item, (*path, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _templates(item, (*path, index))


def tenant_json_schema(destination_types: Mapping[str, DestinationType]) -> dict[str, Any]:
    """A JSON Schema of the tenant file for editors: core keys plus each plugin's own options."""
    defs: dict[str, Any] = {}
    variants = []
    for name, dtype in sorted(destination_types.items()):
        schema = dtype.options.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        properties = {
            "type": {"const": name, "description": dtype.description or f"a {name} destination"},
            "events": {
                "type": "array",
                "items": {"enum": [*EVENT_TYPES, ALL_EVENTS]},
                "minItems": 1,
            },
            "when": {"type": "string", "description": "Liquid condition, e.g. qi.score < 50"},
            "enabled": {"type": "boolean"},
            "retry": {"$ref": "#/$defs/RetryPolicy"},
            "ordered": {
                "type": "boolean",
                "description": "attempt the events of one call one at a time, in order "
                f"(default for this type: {'on' if dtype.ordering else 'off'})",
            },
            **schema.get("properties", {}),
        }
        variants.append(
            {
                "title": f"{name} destination",
                "type": "object",
                "properties": properties,
                "required": sorted({"type", "events", *schema.get("required", [])}),
                "additionalProperties": False,
            }
        )
    retry_schema = RetryPolicy.model_json_schema()
    defs["RetryPolicy"] = retry_schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "cxbridge tenant file",
        "type": "object",
        "properties": {
            "tenant": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
            "timezone": {"type": "string", "description": "IANA time zone, default UTC"},
            "api_keys": {"type": "array", "items": {"type": "string"}},
            "retry": {"$ref": "#/$defs/RetryPolicy"},
            "destinations": {"type": "object", "additionalProperties": {"oneOf": variants}},
        },
        "required": ["tenant"],
        "additionalProperties": False,
        "$defs": defs,
    }

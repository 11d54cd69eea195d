"""A mkdocs hook that writes the reference pages at build time from the code, so they cannot drift:
the configuration reference (settings, tenant-file keys, every installed destination type's options,
from their models' JSON Schema), the event reference (from the event models) and one page per plugin
(its README plus its generated options)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

from cxbridge.events import EVENT_TYPES
from cxbridge.plugins import PluginManager
from cxbridge.retry import RetryPolicy
from cxbridge.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# README folder -> destination type, for the plugin pages.
PLUGIN_READMES = {
    "http": ROOT / "plugins" / "generic_http",
    "salesforce": ROOT / "plugins" / "salesforce",
    "zendesk": ROOT / "plugins" / "zendesk",
    "hubspot": ROOT / "examples" / "plugins" / "hubspot",
}
TENANT_KEYS = {
    "tenant": "The tenant's name: events name it in `tenant`; letters, digits, `_ . -`.",
    "timezone": "IANA time zone that dates render in (default UTC).",
    "api_keys": "Ingress API keys, plain (`${VAR}`) or `sha256:<hex>`.",
    "retry": "Tenant-wide retry policy (keys below); destinations override it.",
    "destinations": "Destinations by name: the core keys below plus the type's own options.",
}
CORE_DESTINATION_KEYS = {
    "type": "The destination type (an installed plugin's, see `cxbridge plugins`).",
    "events": "Event types it receives: a list of the four, or `['*']`.",
    "when": "Optional Liquid condition; the event goes only where it is true.",
    "enabled": "`false` keeps the destination configured but sends nothing.",
    "retry": "Retry keys overriding the tenant's; `events:` inside overrides per event type.",
    "ordered": "`true`: the events of one call go one at a time, in the order they occurred "
    "(default: the type's; on for `salesforce` and `zendesk`).",
}


# -- flattening a JSON Schema into rows ------------------------------------------------------------


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(_resolve(schema, defs).get("title", "object"))
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " \\| ".join(json.dumps(v) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(dict.fromkeys(_type(s, defs) for s in schema[key]))
    kind = schema.get("type", "any")
    if "format" in schema:
        return f"{kind} ({schema['format']})"
    if kind == "array":
        return f"list of {_type(schema.get('items', {}), defs)}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {_type(schema['additionalProperties'], defs)}"
    return str(kind)


def _nested(
    schema: dict[str, Any], defs: dict[str, Any], path: str
) -> Iterator[tuple[str, dict[str, Any], str]]:
    """Object schemas inside a property, with the path prefix and a note for union members."""
    schema = _resolve(schema, defs)
    if "properties" in schema:
        yield f"{path}.", schema, ""
    for key in ("anyOf", "oneOf", "allOf"):
        for member in schema.get(key, []):
            member = _resolve(member, defs)
            const = member.get("properties", {}).get("type", {}).get("const")
            for prefix, sub, note in _nested(member, defs, path):
                yield prefix, sub, note or (f"when `type: {const}`" if const else "")
    if schema.get("type") == "array":
        yield from _nested(schema.get("items", {}), defs, f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nested(schema["additionalProperties"], defs, f"{path}.NAME")


def rows(
    schema: dict[str, Any], defs: dict[str, Any], prefix: str = "", note: str = ""
) -> Iterator[tuple[str, str, str, str]]:
    """(path, type, default, description) of every property, nested ones included."""
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        description = prop.get("description") or _resolve(prop, defs).get("description", "")
        if note:
            description = f"{description} ({note})".strip()
        if name in required:
            default = "required"
        else:  # a default_factory leaves no default in the schema
            default = json.dumps(prop["default"]) if "default" in prop else "computed"
        yield path, _type(prop, defs), default, " ".join(str(description).split())
        for sub_prefix, sub, sub_note in _nested(prop, defs, path):
            yield from rows(sub, defs, sub_prefix, sub_note)


def table(items: Iterator[tuple[str, str, str, str]]) -> str:
    seen: set[tuple[str, str]] = set()
    lines = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for path, kind, default, description in items:
        if (path, description) in seen:
            continue
        seen.add((path, description))
        cells = (f"`{path}`", kind, f"`{default}`", description)
        lines.append(
            "| "
            + " | ".join(c.replace("|", "\\|") if i != 1 else c for i, c in enumerate(cells))
            + " |"
        )
    return "\n".join(lines) + "\n"


# -- the pages -------------------------------------------------------------------------------------


def _plugins() -> PluginManager:
    """The installed plugins, and the outside example (usually not installed) from its folder."""
    manager = PluginManager()
    manager.load_entrypoints()
    if "hubspot" not in manager.destination_types:
        path = PLUGIN_READMES["hubspot"] / "cxbridge_hubspot" / "__init__.py"
        spec = importlib.util.spec_from_file_location("cxbridge_hubspot", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # pydantic resolves the module's annotations through it
        spec.loader.exec_module(module)
        manager.register(module, name="hubspot")
    return manager


def options_table(destination_type: str, manager: PluginManager) -> str:
    schema = manager.destination_types[destination_type].options.model_json_schema()
    return table(rows(schema, schema.get("$defs", {})))


def configuration_reference() -> str:
    manager = _plugins()
    settings = [
        "| Variable | Default | Description |",
        "| --- | --- | --- |",
        *(
            f"| `CXBRIDGE_{name.upper()}` | `{field.default}` | {field.description or ''} |"
            for name, field in Settings.model_fields.items()
        ),
    ]
    retry = RetryPolicy.model_json_schema()
    parts = [
        "# Configuration reference\n",
        "Generated from the models at build time; see [Configuration](../configuration.md) for a "
        "guided tour.\n",
        "## Process settings\n",
        "Read from the environment (or a `.env` file) by `cxbridge worker`, `serve` and the CLI.\n",
        "\n".join(settings) + "\n",
        "## Tenant file\n",
        table((k, "", "", v) for k, v in TENANT_KEYS.items()),
        "## Destination core keys\n",
        "Every destination has these, whatever its type.\n",
        table((k, "", "", v) for k, v in CORE_DESTINATION_KEYS.items()),
        "## Retry keys\n",
        "In `retry:` of the tenant or of a destination.\n",
        table(rows(retry, retry.get("$defs", {}))),
    ]
    for name, dtype in sorted(manager.destination_types.items()):
        parts += [
            f"## Destination type `{name}`\n",
            f"{dtype.description} (plugin `{dtype.plugin}`).\n",
            options_table(name, manager),
        ]
    return "\n".join(parts)


def events_reference() -> str:
    parts = [
        "# Event reference\n",
        "Generated from the event models at build time. Wire names are what JSON and templates use; "
        "unknown fields are kept. Every event has the envelope fields `id`, `type`, `version`, "
        "`occurredAt` and `tenant`. Sample events: `examples/events/`.\n",
    ]
    for name, model in EVENT_TYPES.items():
        schema = model.model_json_schema(by_alias=True)
        doc = " ".join((model.__doc__ or "").split())
        parts += [f"## `{name}`\n", f"{doc}\n", table(rows(schema, schema.get("$defs", {})))]
    return "\n".join(parts)


def plugin_page(destination_type: str, folder: Path, manager: PluginManager) -> str:
    readme = (folder / "README.md").read_text(encoding="utf-8")
    return f"{readme}\n\n## Options reference\n\n{options_table(destination_type, manager)}"


def pages() -> dict[str, str]:
    manager = _plugins()
    generated = {
        "reference/configuration.md": configuration_reference(),
        "reference/events.md": events_reference(),
    }
    for destination_type, folder in PLUGIN_READMES.items():
        generated[f"plugins/{destination_type}.md"] = plugin_page(destination_type, folder, manager)
    return generated


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for uri, content in pages().items():
        files.append(File.generated(config, uri, content=content))
    return files

"""The documentation site builds with ``mkdocs build --strict``, and documents every hook, every
tenant-file option of every installed destination type and every event field. The option and field
paths are walked here from the pydantic models themselves, independently of the generator."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from cxbridge.events import EVENT_TYPES
from cxbridge.hookspecs import hook_names

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import mkdocs_reference  # noqa: E402 - a build tool, not a package

PAGES = mkdocs_reference.pages()


def model_paths(model: type[BaseModel], prefix: str = "", alias: bool = False) -> Iterator[str]:
    """Every field path of ``model`` ("a.b", "a[].b", "a.NAME.b" for maps)."""
    for name, field in model.model_fields.items():
        key = (field.alias or name) if alias else name
        path = f"{prefix}{key}"
        yield path
        yield from _inner(field.annotation, path, alias)


def _inner(annotation: Any, path: str, alias: bool) -> Iterator[str]:
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield from model_paths(annotation, f"{path}.", alias)
    elif origin in (Union, types.UnionType) or str(origin) == "typing.Annotated":
        for arg in get_args(annotation):
            yield from _inner(arg, path, alias)
    elif origin is list:
        yield from _inner(get_args(annotation)[0], f"{path}[]", alias)
    elif origin is dict:
        yield from _inner(get_args(annotation)[1], f"{path}.NAME", alias)


def test_the_site_builds_strict(tmp_path: Path):
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "configuration" / "index.html").exists()


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_documented(hook: str):
    guide = (ROOT / "docs" / "writing-a-plugin.md").read_text()
    assert f"### {hook}(" in guide


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_every_event_field_is_documented(event_type: str):
    page = PAGES["reference/events.md"]
    section = page.split(f"## `{event_type}`", 1)[1].split("\n## ", 1)[0]
    missing = [
        p for p in model_paths(EVENT_TYPES[event_type], alias=True) if f"`{p}`" not in section
    ]
    assert not missing, f"{event_type} fields missing from the event reference: {missing}"


def test_every_tenant_option_of_every_installed_type_is_documented():
    from cxbridge.config import CORE_DESTINATION_KEYS
    from cxbridge.retry import RetryPolicy

    manager = mkdocs_reference._plugins()
    page = PAGES["reference/configuration.md"]
    for key in (
        *CORE_DESTINATION_KEYS,
        "tenant",
        "timezone",
        "api_keys",
        *RetryPolicy.model_fields,
    ):
        assert f"`{key}`" in page, key
    for name, dtype in manager.destination_types.items():
        section = page.split(f"## Destination type `{name}`", 1)[1].split("\n## ", 1)[0]
        missing = [p for p in model_paths(dtype.options) if f"`{p}`" not in section]
        assert not missing, f"{name} options missing from the configuration reference: {missing}"
        assert f"`{name}`" in PAGES[f"plugins/{name}.md"] or name in PAGES[f"plugins/{name}.md"]

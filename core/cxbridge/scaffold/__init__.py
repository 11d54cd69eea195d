"""``cxbridge new-plugin``: writes a working plugin package from the templates beside this module.

The package has a pyproject with its build system and ``cxbridge`` entry point, an options model,
hooks over httpx with the not-my-type check, a README with the outcome table, and a test file that
switches on the plugin kit's contract against a fake of the API.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from cxbridge.errors import CxbridgeError

__all__ = ["ScaffoldError", "new_plugin"]

TEMPLATES = Path(__file__).parent / "template"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


class ScaffoldError(CxbridgeError):
    """The plugin cannot be written (a bad name, or the folder exists)."""


def new_plugin(name: str, directory: Path, *, cxbridge_version: str) -> Path:
    """Write the package of destination type ``name`` into ``directory/cxbridge-NAME``; returns it."""
    if not NAME.match(name):
        raise ScaffoldError(
            f"plugin name {name!r} must be lowercase letters, digits and underscores, starting "
            "with a letter (it becomes the destination type and the module cxbridge_NAME)"
        )
    dist = f"cxbridge-{name.replace('_', '-')}"
    root = directory / dist
    if root.exists():
        raise ScaffoldError(f"{root} already exists; choose another --dir or remove it")
    package = f"cxbridge_{name}"
    values = {
        "name": name,
        "dist": dist,
        "package": package,
        "title": name.replace("_", " ").title(),
        "classname": name.replace("_", " ").title().replace(" ", ""),
        "upper": name.upper(),
        "cxbridge_version": cxbridge_version,
    }
    outputs = {
        "pyproject.toml.tmpl": "pyproject.toml",
        "README.md.tmpl": "README.md",
        "package/__init__.py.tmpl": f"{package}/__init__.py",
        "tests/test_plugin.py.tmpl": f"tests/test_{name}.py",
    }
    for source, output in outputs.items():
        path = root / output
        path.parent.mkdir(parents=True, exist_ok=True)
        text = Template((TEMPLATES / source).read_text(encoding="utf-8")).substitute(values)
        path.write_text(text, encoding="utf-8")
    return root

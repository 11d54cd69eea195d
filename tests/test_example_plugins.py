"""The outside plugin in examples/plugins/hubspot — written from the docs and ``cxbridge.__all__``
alone — installs and passes the kit's contract against its fake HubSpot; it and the in-tree plugins
import nothing private."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

import cxbridge
from tests import outside_plugin

ROOT = Path(__file__).resolve().parent.parent
HUBSPOT = ROOT / "examples" / "plugins" / "hubspot"


def test_the_hubspot_example_installs_and_passes_the_contract(tmp_path: Path):
    package = tmp_path / "hubspot"
    shutil.copytree(HUBSPOT, package, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    python = outside_plugin.install(package, tmp_path)
    summary = outside_plugin.run_tests(python, package)
    assert " failed" not in summary and "20 passed" in summary, summary[-800:]
    assert outside_plugin.plugins(python, tmp_path)["hubspot"]["destination_types"] == ["hubspot"]


PLUGIN_SOURCES = sorted(
    [*HUBSPOT.glob("cxbridge_*/*.py"), *(ROOT / "plugins").glob("*/cxbridge_*/*.py")]
)


@pytest.mark.parametrize("source", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_api(source: Path):
    """The in-tree plugins and the outside example are written as a third party would write them."""
    tree = ast.parse(source.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "cxbridge":
            assert node.module == "cxbridge", f"{source.name} imports the private {node.module}"
            assert {a.name for a in node.names} <= set(cxbridge.__all__), source.name
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("cxbridge.")]
            assert not names, f"{source.name} imports the private {names}"
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "cxbridge"
        ):
            assert node.attr in cxbridge.__all__, f"{source.name} uses cxbridge.{node.attr}"

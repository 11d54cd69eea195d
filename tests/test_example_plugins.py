"""The outside plugin in examples/plugins/hubspot — written from the docs and ``cxbridge.__all__``
alone — installs, passes the kit's contract against its fake HubSpot, and imports nothing private."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import cxbridge
from tests import outside_plugin

HUBSPOT = Path(__file__).resolve().parent.parent / "examples" / "plugins" / "hubspot"


def test_the_hubspot_example_installs_and_passes_the_contract(tmp_path: Path):
    package = tmp_path / "hubspot"
    shutil.copytree(HUBSPOT, package, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    python = outside_plugin.install(package, tmp_path)
    summary = outside_plugin.run_tests(python, package)
    assert " failed" not in summary and "20 passed" in summary, summary[-800:]
    assert outside_plugin.plugins(python, tmp_path)["hubspot"]["destination_types"] == ["hubspot"]


def test_the_hubspot_plugin_imports_only_the_public_api():
    tree = ast.parse((HUBSPOT / "cxbridge_hubspot" / "__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cxbridge"):
            assert node.module == "cxbridge", f"imports the private module {node.module}"
            assert {a.name for a in node.names} <= set(cxbridge.__all__)

"""``cxbridge new-plugin acme`` writes a package that installs, passes the kit's contract and is listed
by ``cxbridge plugins`` — installed into a throwaway environment, so the suite's own never sees it."""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

from cxbridge.cli import cli
from tests import outside_plugin


def test_new_plugin_installs_passes_its_tests_and_is_listed(tmp_path: Path):
    result = CliRunner().invoke(cli, ["new-plugin", "acme", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "cxbridge-acme"
    assert (root / "pyproject.toml").read_text().startswith("[build-system]")

    for lint in (["check"], ["format", "--check"]):  # what it writes is clean as written
        linted = outside_plugin.run([sys.executable, "-m", "ruff", *lint, "."], root)
        assert linted.returncode == 0, linted.stdout + linted.stderr

    python = outside_plugin.install(root, tmp_path)
    assert "19 passed in" in outside_plugin.run_tests(python, root)
    listed = outside_plugin.plugins(python, tmp_path)
    assert listed["acme"]["destination_types"] == ["acme"]
    assert listed["acme"]["distribution"] == "cxbridge-acme"
    assert "acme" not in outside_plugin.plugins(Path(sys.executable), tmp_path)


def test_new_plugin_refuses_a_bad_name_and_an_existing_folder(tmp_path: Path):
    bad = CliRunner().invoke(cli, ["new-plugin", "Acme-CRM", "--dir", str(tmp_path)])
    assert bad.exit_code == 1 and "lowercase letters, digits and underscores" in bad.output
    assert CliRunner().invoke(cli, ["new-plugin", "acme", "--dir", str(tmp_path)]).exit_code == 0
    again = CliRunner().invoke(cli, ["new-plugin", "acme", "--dir", str(tmp_path)])
    assert again.exit_code == 1 and "already exists" in again.output

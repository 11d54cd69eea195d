"""``cxbridge new-plugin acme`` writes a package that installs, passes the kit's contract and is listed
by ``cxbridge plugins``. It is installed into a throwaway virtualenv layered over this one (a ``.pth``
adds this environment's packages), so the suite's own environment never sees it."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from click.testing import CliRunner

from cxbridge.cli import cli


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_new_plugin_installs_passes_its_tests_and_is_listed(tmp_path: Path):
    result = CliRunner().invoke(cli, ["new-plugin", "acme", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "cxbridge-acme"
    assert (root / "pyproject.toml").read_text().startswith("[build-system]")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path
    )
    parent = sysconfig.get_path("purelib")
    Path(site.stdout.strip(), "_cxbridge_parent.pth").write_text(
        f"import site; site.addsitedir({parent!r})\n"
    )

    install = _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(root),
        ],
        tmp_path,
    )
    assert install.returncode == 0, install.stderr
    tests = _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], root)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "19 passed" in tests.stdout, tests.stdout[-500:]
    listed = _run([str(python), "-m", "cxbridge", "plugins", "--json"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    assert plugins["acme"]["destination_types"] == ["acme"]
    assert plugins["acme"]["distribution"] == "cxbridge-acme"

    # The suite's environment stays as it was.
    here = _run([sys.executable, "-m", "cxbridge", "plugins", "--json"], tmp_path)
    assert "acme" not in {p["name"] for p in json.loads(here.stdout)["plugins"]}


def test_new_plugin_refuses_a_bad_name_and_an_existing_folder(tmp_path: Path):
    bad = CliRunner().invoke(cli, ["new-plugin", "Acme-CRM", "--dir", str(tmp_path)])
    assert bad.exit_code == 1 and "lowercase letters, digits and underscores" in bad.output
    assert CliRunner().invoke(cli, ["new-plugin", "acme", "--dir", str(tmp_path)]).exit_code == 0
    again = CliRunner().invoke(cli, ["new-plugin", "acme", "--dir", str(tmp_path)])
    assert again.exit_code == 1 and "already exists" in again.output
